"""Helpers that build real parts of the world for tests (servers, users, peers)."""
