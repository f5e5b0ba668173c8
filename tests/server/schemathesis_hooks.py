"""Schemathesis hooks for the contract test: authenticate every request as a real user.

Loaded by the `schemathesis` CLI through SCHEMATHESIS_HOOKS (tests/server/test_openapi_contract.py).
The fuzzer calls logout, password changes and account deletion too, each of which ends the token;
schemathesis fetches a new one on the next 401, so this logs in again, and registers a new account
when that fails (deleted; or its name was taken by the fuzzer's own registrations meanwhile).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import httpx
import schemathesis

PASSWORD = "correct horse battery"


@schemathesis.auth()
class FuzzerToken:
    username = os.environ.get("PEERPOST_FUZZ_USER", "fuzzer")

    def get(self, case: Any, ctx: Any) -> str:
        with httpx.Client(base_url=os.environ["PEERPOST_FUZZ_URL"], timeout=30) as http:
            login = http.post("/token", data={"username": self.username, "password": PASSWORD})
            if login.status_code == 401:
                FuzzerToken.username = f"fuzzer-{secrets.token_hex(4)}"
                email = f"{self.username}@example.org"
                made = http.post(
                    "/users/", json={"username": self.username, "email": email, "password": PASSWORD}
                )
                made.raise_for_status()
                login = http.post("/token", data={"username": self.username, "password": PASSWORD})
            login.raise_for_status()
            return str(login.json()["access_token"])

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
