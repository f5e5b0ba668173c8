"""Accounts: register, read and change your own, delete it, find others.

Registration records the client's address like a login does, and is limited per address and
globally (signalling.account_limits). Usernames are unique ignoring case and look-alike letters
(store.names). A password or e-mail change needs the current password, checked through the login
limiter; a password change signs the account out everywhere (token version bumped, refresh tokens
revoked, live sockets closed): the caller logs in again with the new password. Deleting the account
removes everything it owns and closes its sockets.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from signalling.account_limits import LoginLimits
from signalling.contact_news import Who, tell_removed
from signalling.deps import CurrentUser, Limit, Session, Skip, UserIdPath
from signalling.errors import Conflict, Forbidden, NotFound, Unauthorized
from signalling.openapi import errors
from signalling.protocol import ApiErrorCode, CloseCode, UserCreate, UserMe, UserOut, UserPublic, UserUpdate
from signalling.routes.tokens import client_address
from store import accounts
from store import contacts as contact_store
from store import tokens as refresh_tokens
from store.errors import EmailTaken, UsernameTaken
from store.errors import NotFound as StoreNotFound

router = APIRouter(tags=["users"])


def _taken(username: str, existing: str) -> str:
    if existing.lower() == username.lower():
        return f"The username '{username}' is already taken."
    return (
        f"The username '{username}' looks too much like the existing name '{existing}' "
        "(names are compared ignoring case and look-alike letters such as I and l, 0 and O); pick another."
    )


@router.post(
    "/users/",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    summary="Register an account",
    responses=errors(e409="The username (`username_taken`) or e-mail (`email_taken`) is already taken."),
)
async def register(body: UserCreate, request: Request, session: Session) -> UserOut:
    address, port = client_address(request)
    request.app.state.registration_limits.check(address)  # 429 past the per-address or global limit
    # Cheap checks before the expensive hash, so a taken name costs no bcrypt time.
    if (existing := await accounts.name_taken(session, body.username)) is not None:
        raise Conflict(_taken(body.username, existing), code=ApiErrorCode.USERNAME_TAKEN)
    await session.commit()
    password_hash = await request.app.state.passwords.hash(body.password)
    try:
        user = await accounts.create(
            session,
            username=body.username,
            email=str(body.email),
            password_hash=password_hash,
            address=address,
            port=port,
        )
    except UsernameTaken as exc:
        existing = await accounts.name_taken(session, body.username) or body.username
        raise Conflict(_taken(body.username, existing), code=ApiErrorCode.USERNAME_TAKEN) from exc
    except EmailTaken as exc:
        raise Conflict(
            "An account with this e-mail address already exists.", code=ApiErrorCode.EMAIL_TAKEN
        ) from exc
    await session.commit()
    return UserOut.model_validate(user)


@router.get("/users/me", response_model=UserMe, summary="Your own account")
async def read_me(user: CurrentUser) -> UserMe:
    return UserMe.model_validate(user)


@router.patch(
    "/users/me",
    response_model=UserMe,
    summary="Change your e-mail and/or password (a password change signs you out everywhere)",
    responses=errors(
        e403="A password change without `current_password` or with a wrong one.",
        e409="The e-mail belongs to another account (`email_taken`).",
    ),
)
async def update_me(body: UserUpdate, user: CurrentUser, request: Request, session: Session) -> UserMe:
    changes_email = body.email is not None and str(body.email).lower() != user.email
    if body.password is not None or changes_email:
        await session.commit()  # no database connection held while bcrypt runs
        if not body.current_password:
            raise Forbidden(
                "Changing the password or the e-mail needs current_password as well.",
                code=ApiErrorCode.CURRENT_PASSWORD_REQUIRED,
            )
        await _check_current_password(request, user.username, user.password_hash, body.current_password)
    if changes_email:
        try:
            await accounts.change_email(session, user, str(body.email))
        except EmailTaken as exc:
            raise Conflict(
                "An account with this e-mail address already exists.", code=ApiErrorCode.EMAIL_TAKEN
            ) from exc
    if body.password is not None:
        new_hash = await request.app.state.passwords.hash(body.password)
        await accounts.change_password(session, user, new_hash)
        await refresh_tokens.revoke_all(session, user.id)
    await session.commit()
    if body.password is not None:
        await request.app.state.hub.disconnect_user(user.id, CloseCode.UNAUTHORIZED, "password changed")
    return UserMe.model_validate(user)


async def _check_current_password(request: Request, username: str, hashed: bytes, given: str) -> None:
    """The current password, through the login limiter (a wrong one counts as a failed login)."""
    limits: LoginLimits = request.app.state.login_limits
    address, _ = client_address(request)
    delay = limits.check(username, address)
    if delay:
        await asyncio.sleep(delay)
    if not await request.app.state.passwords.verify(given, hashed):
        limits.failed(username)
        raise Forbidden("The current password is wrong.", code=ApiErrorCode.WRONG_PASSWORD)
    limits.succeeded(username, address)


@router.delete(
    "/users/self",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete your account, its devices, contacts (both ways) and queued messages",
)
async def delete_self(user: CurrentUser, request: Request, session: Session) -> Response:
    user_id = user.id
    gone = Who(user.id, user.username)
    told = await contact_store.related_user_ids(session, user_id)
    try:
        await accounts.delete_account(session, user_id)
    except StoreNotFound as exc:  # deleted by a concurrent request
        raise Unauthorized("This account no longer exists.", code=ApiErrorCode.ACCOUNT_GONE) from exc
    await session.commit()
    request.app.state.hub.forget_reach()  # its devices stop being reachable now, not in 5 s
    await request.app.state.hub.disconnect_user(user_id, CloseCode.ACCOUNT_GONE, "account deleted")
    await tell_removed(request.app.state.hub, gone, told)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/users/search",
    response_model=list[UserPublic],
    summary="Find users whose name starts with q (any case), without yourself",
)
async def search(
    user: CurrentUser,
    session: Session,
    q: Annotated[str, Query(min_length=1, max_length=32, description="username prefix")],
    skip: Skip = 0,
    limit: Limit = 20,
) -> list[UserPublic]:
    found = await accounts.search(session, q, exclude_user_id=user.id, skip=skip, limit=limit)
    return [UserPublic.model_validate(u) for u in found]


@router.get(
    "/users/{user_id:int}",
    response_model=UserPublic,
    summary="Another user's public profile",
    responses=errors(e404="No user has this id (`user_not_found`)."),
)
async def read_user(user_id: UserIdPath, _user: CurrentUser, session: Session) -> UserPublic:
    other = await accounts.get(session, user_id)
    if other is None:
        raise NotFound(f"There is no user with id {user_id}.", code=ApiErrorCode.USER_NOT_FOUND)
    return UserPublic.model_validate(other)
