"""Request dependencies shared by the routers, and the token check the WebSocket hub reuses.

`db_session` gives each request one session from the app's factory; `current_user` turns the
bearer token into the `store.models.User`, refusing it when the user's token version moved on
(logout, password change), its login was revoked or made for a device since revoked
(`device_revoked`), or the account is gone. `authenticate_token(app, token)` is the same check
without a request, for the hub's WebSocket handshake and `auth` frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from signalling.errors import Unauthorized
from signalling.protocol import MAX_INT64, ApiErrorCode
from signalling.settings import Settings
from signalling.tokens import TokenService
from store import accounts
from store import tokens as refresh_tokens
from store.models import User

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)

# Parameters shared by the routers, bounded so that the schema says what the store can hold (a
# 64-bit integer column): a bigger number is a 422 naming the parameter, never a database overflow.
UserIdPath = Annotated[int, Path(ge=1, le=MAX_INT64, description="a user's id")]
Skip = Annotated[int, Query(ge=0, le=MAX_INT64, description="rows to skip")]
Limit = Annotated[int, Query(ge=1, le=100, description="rows to return, at most 100")]


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(db_session)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_tokens(request: Request) -> TokenService:
    return request.app.state.tokens


async def user_for_token(session: AsyncSession, tokens: TokenService, token: str) -> User:
    claims = tokens.decode_access(token)
    user = await accounts.get(session, claims.user_id)
    if user is None:
        raise Unauthorized("This account no longer exists.", code=ApiErrorCode.ACCOUNT_GONE)
    if user.token_version != claims.version:
        raise Unauthorized(
            "This token was revoked (logout or password change); log in again.",
            code=ApiErrorCode.TOKEN_REVOKED,
        )
    if claims.family is not None:
        login = await refresh_tokens.login_state(session, claims.family)
        if login.device_revoked:
            raise Unauthorized(
                f"This token's device ({claims.device or 'this login'}) was revoked; "
                "this device must log in again as a new device.",
                code=ApiErrorCode.DEVICE_REVOKED,
            )
        if login.revoked:
            raise Unauthorized(
                "This token's session was signed out (its refresh token was used twice); log in again.",
                code=ApiErrorCode.TOKEN_REVOKED,
            )
    return user


async def authenticate_token(app: Starlette, token: str) -> User:
    """Who `token` belongs to, for callers without a request (the hub). Raises `Unauthorized`."""
    async with app.state.sessions() as session:
        return await user_for_token(session, app.state.tokens, token)


async def current_user(
    request: Request, session: Session, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> User:
    if not token:
        raise Unauthorized("Log in first: this call needs an 'Authorization: Bearer <token>' header.")
    return await user_for_token(session, request.app.state.tokens, token)


CurrentUser = Annotated[User, Depends(current_user)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Tokens = Annotated[TokenService, Depends(get_tokens)]
