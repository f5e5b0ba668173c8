"""The resident node: one long-running peer process per profile, and the clients that talk to it.

`rpc` is the wire format of the local API (JSON-RPC 2.0, one JSON object per line over a Unix
socket), `client` is the stdlib-only client every `peerpost` command uses (fast to import: no
aiortc, no cryptography), `api` maps each call onto `Peer`, and `node` is the process that owns the
one `Peer`, the socket and the in-process web UI. See docs/local-api.md.
"""
