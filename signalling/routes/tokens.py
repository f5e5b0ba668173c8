"""Login, token refresh and logout.

POST /token takes the OAuth2 password form and answers a TokenPair (a short-lived JWT access token
and a rotating refresh token). Attempts are limited per username and per client address before any
bcrypt work is done; a successful login does not count against the limit. A login may name the
device it is for (`device_id`): its tokens are then that device's, and die when the device is
revoked (migration 0007), while the account's other devices keep theirs. Logout revokes every
refresh token and bumps the token version, so access tokens already handed out stop working at once,
and the hub closes the user's live sockets.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status

from signalling.account_limits import LoginLimits
from signalling.deps import CurrentUser, Session, Tokens
from signalling.errors import Unauthorized
from signalling.openapi import errors
from signalling.protocol import (
    DEVICE_ID_PATTERN,
    USERNAME_PATTERN,
    ApiErrorCode,
    CloseCode,
    RefreshRequest,
    TokenPair,
)
from signalling.tokens import TokenService
from store import accounts
from store import devices as device_store
from store import tokens as refresh_tokens
from store.errors import RefreshTokenDeviceRevoked, RefreshTokenInvalid, RefreshTokenReused
from store.models import User

router = APIRouter(tags=["auth"])
_USERNAME = re.compile(USERNAME_PATTERN)


class LoginForm:
    """The OAuth2 password form (RFC 6749 §4.3), as FastAPI's OAuth2PasswordRequestForm, but with
    what the server requires stated in the schema: a form field sent empty is a missing one, so
    username and password are at least one character, and a form has no null, so no field is
    nullable (the optional ones default to text). `device_id` (ours, not OAuth2's) names the device
    the tokens are for; empty names none (the tokens are the account's)."""

    def __init__(
        self,
        username: Annotated[str, Form(min_length=1, max_length=256)],
        password: Annotated[
            str, Form(min_length=1, max_length=1024, json_schema_extra={"format": "password"})
        ],
        grant_type: Annotated[str, Form(pattern="^password$")] = "password",
        scope: Annotated[str, Form(max_length=1024)] = "",
        client_id: Annotated[str, Form(max_length=256)] = "",
        client_secret: Annotated[str, Form(max_length=1024)] = "",
        device_id: Annotated[
            str,
            Form(
                pattern=f"^$|{DEVICE_ID_PATTERN}",
                max_length=64,
                description="the device these tokens are for (revoking it ends them)",
            ),
        ] = "",
    ) -> None:
        self.username, self.password, self.grant_type = username, password, grant_type
        self.scopes = scope.split()
        self.client_id, self.client_secret = client_id, client_secret
        self.device_id = device_id or None


def client_address(request: Request) -> tuple[str, int | None]:
    if request.client is None:
        return "unknown", None
    return request.client.host, request.client.port


async def issue_pair(
    session: Session, tokens: TokenService, user: User, device_id: str | None = None
) -> TokenPair:
    """A new access token and a new refresh-token family, for `device_id` when named (the caller
    commits)."""
    refresh = tokens.new_refresh_token()
    row = await refresh_tokens.issue(
        session,
        user.id,
        tokens.hash_refresh_token(refresh),
        ttl=timedelta(seconds=tokens.refresh_ttl),
        device_id=device_id,
    )
    return TokenPair(
        access_token=tokens.issue_access(user.id, user.token_version, family=row.family, device=device_id),
        refresh_token=refresh,
        expires_in=tokens.access_ttl,
    )


@router.post(
    "/token",
    response_model=TokenPair,
    summary="Log in with the OAuth2 password form",
    responses=errors(
        e401="Wrong username or password (`bad_credentials`), or the named device was revoked "
        "(`device_revoked`: log in as a new device).",
        e429="Too many attempts for this name or from this address.",
    ),
)
async def login(
    request: Request, form: Annotated[LoginForm, Depends()], session: Session, tokens: Tokens
) -> TokenPair:
    limits: LoginLimits = request.app.state.login_limits
    address, port = client_address(request)
    delay = limits.check(form.username, address)  # 429 for this name from this address
    if delay:
        await asyncio.sleep(delay)  # the account-wide ceiling slows guessing, it never locks out

    user = await accounts.get_by_username(session, form.username) if _USERNAME.match(form.username) else None
    # End the read before bcrypt runs, so no database connection waits on a worker thread.
    await session.commit()
    password_ok = await request.app.state.passwords.verify(
        form.password, user.password_hash if user else None
    )
    if user is None or not password_ok:
        limits.failed(form.username)
        raise Unauthorized("Wrong username or password.", code=ApiErrorCode.BAD_CREDENTIALS)
    limits.succeeded(form.username, address)
    if form.device_id is not None and await device_store.is_revoked(session, form.device_id):
        raise Unauthorized(
            f"The device '{form.device_id}' was revoked; log in as a new device.",
            code=ApiErrorCode.DEVICE_REVOKED,
        )
    await accounts.record_login(session, user, address=address, port=port)
    pair = await issue_pair(session, tokens, user, form.device_id)
    await session.commit()
    return pair


@router.post(
    "/token/refresh",
    response_model=TokenPair,
    summary="Trade a refresh token for a new pair (the old refresh token is spent)",
    responses=errors(
        e401="Unknown, expired, revoked or reused refresh token, its device was revoked "
        "(`device_revoked`), or the account is gone."
    ),
)
async def refresh(body: RefreshRequest, request: Request, session: Session, tokens: Tokens) -> TokenPair:
    new_refresh = tokens.new_refresh_token()
    try:
        row = await refresh_tokens.rotate(
            session,
            tokens.hash_refresh_token(body.refresh_token),
            tokens.hash_refresh_token(new_refresh),
            ttl=timedelta(seconds=tokens.refresh_ttl),
        )
    except RefreshTokenReused as exc:
        await session.commit()  # keep the family revoked: its access tokens die with it (deps)
        # Sockets opened with them close now; the owner's other sessions reconnect with their own.
        await request.app.state.hub.disconnect_user(exc.user_id, CloseCode.UNAUTHORIZED, "token reused")
        raise Unauthorized(
            "This refresh token was already used; every session started from the same login has been "
            "signed out. Log in again.",
            code=ApiErrorCode.REFRESH_REUSED,
        ) from exc
    except RefreshTokenDeviceRevoked as exc:
        raise Unauthorized(
            "This refresh token's device was revoked; log in again as a new device.",
            code=ApiErrorCode.DEVICE_REVOKED,
        ) from exc
    except RefreshTokenInvalid as exc:
        raise Unauthorized(
            "The refresh token is unknown, expired or revoked; log in again.",
            code=ApiErrorCode.INVALID_REFRESH,
        ) from exc
    user = await accounts.get(session, row.user_id)
    if user is None:
        raise Unauthorized("This account no longer exists.", code=ApiErrorCode.ACCOUNT_GONE)
    await session.commit()
    return TokenPair(
        access_token=tokens.issue_access(
            user.id, user.token_version, family=row.family, device=row.device_id
        ),
        refresh_token=new_refresh,
        expires_in=tokens.access_ttl,
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out everywhere: revoke refresh tokens, invalidate access tokens, close sockets",
)
async def logout(request: Request, user: CurrentUser, session: Session) -> Response:
    user_id = user.id
    await refresh_tokens.revoke_all(session, user_id)
    await accounts.bump_token_version(session, user)
    await session.commit()
    await request.app.state.hub.disconnect_user(user_id, CloseCode.ACCOUNT_GONE, "logged out")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
