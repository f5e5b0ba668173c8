"""Blocks: block someone, lift it, list whom you blocked (docs/server.md "Blocking").

Blocking ends the contact both ways and from then on nothing of the blocked user reaches the
blocker: their contact requests are kept as their own pending row but never shown to the blocker
nor pushed, their messages and signals are refused by the hub as to any non-contact, and presence
is shared only between accepted contacts. The blocked user is told only what a removal tells (the
contact is gone), never that it is a block. The blocker's own devices hear `blocked`/`unblocked`
contact frames, so every device's list follows.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from signalling.contact_news import Who
from signalling.deps import CurrentUser, Limit, Session, Skip, UserIdPath
from signalling.errors import BadRequest, Conflict, Invalid, NotFound
from signalling.openapi import errors
from signalling.protocol import ApiErrorCode, BlockAdd, BlockOut, ContactEvent, ContactFrame
from store import accounts
from store import blocks as block_store
from store import contacts as contact_store
from store.errors import NotFound as StoreNotFound

router = APIRouter(prefix="/me/blocks", tags=["contacts"])


async def _push(request: Request, user_id: int, frame: ContactFrame) -> None:
    try:
        await request.app.state.hub.push_to_user(user_id, frame.model_dump_json())
    except Exception:  # the change is committed; only the live update is lost
        return


@router.post(
    "",
    response_model=BlockOut,
    status_code=status.HTTP_201_CREATED,
    summary="Block someone (by user_id or username): ends the contact, hides their requests, "
    "refuses their messages, signals and presence",
    responses=errors(
        e400="Yourself (`self_block`).",
        e404="No such user (`user_not_found`).",
        e409="Blocked already (`already_blocked`).",
    ),
)
async def block(body: BlockAdd, user: CurrentUser, request: Request, session: Session) -> BlockOut:
    if (body.user_id is None) == (body.username is None):
        raise Invalid("Invalid request: give exactly one of user_id or username.")
    other = (
        await accounts.get(session, body.user_id)
        if body.user_id is not None
        else await accounts.get_by_username(session, body.username or "")
    )
    if other is None:
        raise NotFound("There is no such user.", code=ApiErrorCode.USER_NOT_FOUND)
    if other.id == user.id:
        raise BadRequest("You cannot block yourself.", code=ApiErrorCode.SELF_BLOCK)
    me, them = Who(user.id, user.username), Who(other.id, other.username)
    had_row = await contact_store.view_of(session, them.id, me.id) is not None
    try:
        row = await block_store.block(session, me.id, them.id)
    except block_store.AlreadyBlocked as exc:
        raise Conflict(
            f"You have blocked {them.username} already.", code=ApiErrorCode.ALREADY_BLOCKED
        ) from exc
    await session.commit()
    request.app.state.hub.forget_reach()  # the hub refuses their frames from now on
    await _push(
        request,
        me.id,
        ContactFrame(event=ContactEvent.BLOCKED, user_id=them.id, username=them.username, by_me=True),
    )
    if had_row:  # to them it looks like any removal
        await _push(
            request, them.id, ContactFrame(event=ContactEvent.REMOVED, user_id=me.id, username=me.username)
        )
    return BlockOut(user_id=them.id, username=them.username, created_at=row.created_at)


@router.get("", response_model=list[BlockOut], summary="Whom you have blocked")
async def list_blocks(
    user: CurrentUser, session: Session, skip: Skip = 0, limit: Limit = 50
) -> list[BlockOut]:
    rows = await block_store.blocked_by(session, user.id, skip=skip, limit=limit)
    return [BlockOut(user_id=u.id, username=u.username, created_at=b.created_at) for b, u in rows]


@router.delete(
    "/{user_id:int}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Lift a block (the contact is not restored: ask again if you want it)",
    responses=errors(e404="You have not blocked that user (`not_blocked`)."),
)
async def unblock(user_id: UserIdPath, user: CurrentUser, request: Request, session: Session) -> Response:
    me_id = user.id
    try:
        await block_store.unblock(session, me_id, user_id)
    except StoreNotFound as exc:
        raise NotFound(f"You have not blocked user {user_id}.", code=ApiErrorCode.NOT_BLOCKED) from exc
    await session.commit()
    other = await accounts.get(session, user_id)
    if other is not None:
        frame = ContactFrame(
            event=ContactEvent.UNBLOCKED, user_id=other.id, username=other.username, by_me=True
        )
        await _push(request, me_id, frame)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
