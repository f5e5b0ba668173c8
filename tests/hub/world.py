"""Builds the world the hub tests need through the real REST API: accounts, devices, contacts.

`World(server)` registers users, logs them in, publishes one device each (a fresh Ed25519 identity
key and a committed RSA public key: the server stores bundles, it does not check them against the
crypto) and makes contacts accept each other. `DeviceClient` is a thin `websockets` client that
reads frames as dicts and waits for a given type with a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from crypto.keys import DeviceKeys
from signalling.protocol import b64encode

PASSWORD = "correct horse battery"
KEYS_DIR = Path(__file__).resolve().parents[1] / "data" / "crypto" / "devices"


@functools.cache
def committed_keys(index: int) -> DeviceKeys:
    """The crypto tests' committed device keys (RSA-4096 generation is too slow to repeat)."""
    return DeviceKeys.from_pem((KEYS_DIR / f"device{index}.pem").read_bytes(), validate=False)


def rsa_public_der() -> bytes:
    """One RSA public key for every test device that does not need its own private key."""
    return committed_keys(5).encryption_public_der()


@dataclass
class Account:
    user_id: int
    username: str
    token: str
    device_id: str
    devices: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class World:
    def __init__(self, base_url: str, ws_url: str) -> None:
        self.base_url = base_url
        self.ws_url = ws_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30.0)

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> World:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def account(self, name: str | None = None, devices: int = 1) -> Account:
        name = name or f"u{secrets.token_hex(5)}"
        r = await self.http.post(
            "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        token = await self.login(name)
        account = Account(user_id, name, token, "")
        for _ in range(devices):
            account.devices.append(await self.publish_device(account))
        account.device_id = account.devices[0] if account.devices else ""
        return account

    async def login(self, username: str) -> str:
        r = await self.http.post("/token", data={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    async def publish_device(self, account: Account) -> str:
        device_id = f"dev-{secrets.token_hex(6)}"
        identity = ed25519.Ed25519PrivateKey.generate()
        public = identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        body = {
            "device_id": device_id,
            "identity_key": b64encode(public),
            "encryption_key": b64encode(rsa_public_der()),
            "created_at": int(time.time()),
            "signature": b64encode(identity.sign(device_id.encode())),
        }
        r = await self.http.post("/me/devices", json=body, headers=account.auth)
        assert r.status_code == 201, r.text
        return device_id

    async def befriend(self, a: Account, b: Account) -> None:
        r = await self.http.post("/me/contacts/", json={"friend_id": b.user_id}, headers=a.auth)
        assert r.status_code == 201, r.text
        r = await self.http.post(f"/me/contacts/{a.user_id}/accept", headers=b.auth)
        assert r.status_code == 200, r.text

    async def connect(self, account: Account, device_id: str | None = None, **kw: Any) -> DeviceClient:
        client = DeviceClient(self.ws_url, account, device_id or account.device_id)
        await client.open(**kw)
        return client


class DeviceClient:
    """One device's socket. `ready` holds the ready frame; frames read while waiting are kept."""

    def __init__(self, ws_url: str, account: Account, device_id: str) -> None:
        self.ws_url = ws_url
        self.account = account
        self.device_id = device_id
        self.ws: Any = None
        self.ready: dict[str, Any] = {}
        self.backlog: list[dict[str, Any]] = []

    async def open(
        self, *, by_frame: bool = False, wait_drained: bool = True, query: str = "", **kw: Any
    ) -> None:
        if by_frame:
            self.ws = await websockets.connect(self.ws_url, max_size=None, **kw)
            await self.send({"type": "auth", "token": self.account.token, "device_id": self.device_id})
        else:
            self.ws = await websockets.connect(
                f"{self.ws_url}?device_id={self.device_id}{query}",
                additional_headers=self.account.auth,
                max_size=None,
                **kw,
            )
        self.ready = await self.expect("ready")
        if wait_drained and self.ready["pending"] == 0:
            await self.expect("drained")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, deadline: float = 5.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        async with asyncio.timeout(deadline):
            return json.loads(await self.ws.recv())

    async def expect(
        self, kind: str | tuple[str, ...], deadline: float = 5.0, where: Callable[[dict], bool] | None = None
    ) -> dict:
        """The next frame of type `kind` (or one of the types; matching `where`); other frames are
        kept for later."""
        kinds = (kind,) if isinstance(kind, str) else kind
        for i, frame in enumerate(self.backlog):
            if frame["type"] in kinds and (where is None or where(frame)):
                return self.backlog.pop(i)
        async with asyncio.timeout(deadline):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["type"] in kinds and (where is None or where(frame)):
                    return frame
                self.backlog.append(frame)

    async def closed(self, deadline: float = 5.0) -> tuple[int | None, str]:
        """Wait for the server to close the socket; returns (code, reason)."""
        async with asyncio.timeout(deadline):
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed as exc:
                rcvd = exc.rcvd
                return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    def send_frame(
        self,
        to: list[tuple[int, str]],
        envelope: bytes,
        message_id: str | None = None,
        ref: str | None = None,
    ) -> dict[str, Any]:
        return {
            "type": "send",
            "ref": ref or secrets.token_hex(4),
            "message_id": message_id or secrets.token_hex(16),
            "envelope": b64encode(envelope),
            "recipients": [{"user_id": u, "device_id": d} for u, d in to],
        }


def opaque_envelope(size: int = 256) -> bytes:
    """Ciphertext-like bytes: what the server sees of a real envelope."""
    return os.urandom(size)
