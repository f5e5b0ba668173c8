"""Access tokens (JWT, HS256) and the opaque refresh tokens that renew them.

An access token carries `sub` (user id), `ver` (the user's token version: logout and password
change bump it, so older tokens stop working at once), `fam` (the login's refresh-token family: a
family revoked for reuse takes its access tokens with it at once), `dev` (the device the login was
made for, when it named one: revoking the device revokes the family), `jti`, `iat` and `exp`. The algorithm is
pinned on decode; there is no default key in code: the secret comes from settings or is generated
on first start into `<data_dir>/jwt-secret` with mode 0600. Several instances must share it
(set `PEERPOST_JWT_SECRET` or share the data dir).

Refresh tokens are random strings; only their SHA-256 is stored (`store.tokens`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from jose import JWTError, jwt

from signalling.errors import Unauthorized
from signalling.protocol import ApiErrorCode

ALGORITHM = "HS256"
SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret


def load_or_create_secret(data_dir: Path) -> str:
    """The key kept in the data dir, created (0600, never overwritten) on first use."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) < 32:
            raise RuntimeError(
                f"{path} holds a JWT secret that is too short; delete it to make a new one"
            ) from None
        return secret
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    version: int
    jti: str
    expires_at: int
    family: str | None = None  # the refresh-token family (login) it was issued from
    device: str | None = None  # the device the login was made for, when it named one


class TokenService:
    def __init__(self, secret: str, access_ttl: int, refresh_ttl: int) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue_access(
        self, user_id: int, version: int, *, family: str | None = None, device: str | None = None
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": str(user_id),
            "ver": version,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.access_ttl,
            "typ": "access",
        }
        if family is not None:
            claims["fam"] = family
        if device is not None:
            claims["dev"] = device
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode_access(self, token: str) -> AccessClaims:
        """Verify signature, algorithm and expiry; raise `Unauthorized` with the reason."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require_exp": True, "require_sub": True, "require_jti": True},
            )
        except JWTError as exc:
            expired = "expired" in str(exc).lower()
            raise Unauthorized(
                "The access token has expired; refresh it or log in again."
                if expired
                else "The access token is not valid.",
                code=ApiErrorCode.TOKEN_EXPIRED if expired else ApiErrorCode.INVALID_TOKEN,
            ) from exc
        try:
            if claims.get("typ") != "access":
                raise ValueError("not an access token")
            return AccessClaims(
                user_id=int(claims["sub"]),
                version=int(claims["ver"]),
                jti=str(claims["jti"]),
                expires_at=int(claims["exp"]),
                family=str(claims["fam"]) if claims.get("fam") is not None else None,
                device=str(claims["dev"]) if claims.get("dev") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise Unauthorized("The access token is not valid.", code=ApiErrorCode.INVALID_TOKEN) from exc

    @staticmethod
    def new_refresh_token() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def hash_refresh_token(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8")).digest()
