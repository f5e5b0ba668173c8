"""Contacts: ask, accept, decline, label, remove, list.

Online state and last-seen are shown only for accepted contacts: a pending request must not reveal
when someone is around. A declined asker may not ask again for a cool-down period (even after
deleting the declined row); requests from someone you blocked never reach you (routes/blocks.py).
Online state comes from `app.state.presence` (the hub's view).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from signalling.contact_news import Person, Who, contact_out, tell_both
from signalling.deps import CurrentUser, Limit, Session, Skip, UserIdPath
from signalling.errors import Conflict, NotFound, TooManyRequests
from signalling.openapi import errors
from signalling.presence import PresenceView
from signalling.protocol import (
    ApiErrorCode,
    ContactAdd,
    ContactEvent,
    ContactOut,
    ContactStatus,
    ContactUpdate,
)
from store import accounts
from store import blocks as block_store
from store import contacts as contact_store
from store.contacts import ContactView
from store.errors import DuplicateContact
from store.errors import NotFound as StoreNotFound
from store.models import utcnow

router = APIRouter(prefix="/me/contacts", tags=["contacts"])


def _presence(request: Request) -> PresenceView:
    return request.app.state.presence


async def _tell(
    request: Request, session: Session, event: ContactEvent, actor: Person, other: Person
) -> None:
    """After the commit: both people's live devices hear of the change (signalling.contact_news)."""
    await tell_both(session, request.app.state.hub, _presence(request), event, actor, other)


async def _outs(request: Request, views: list[ContactView]) -> list[ContactOut]:
    """Rows with presence; only accepted contacts are asked about (one round for all of them)."""
    accepted = [v.other.id for v in views if v.contact.status == ContactStatus.ACCEPTED]
    online = await _presence(request).online_among(accepted) if accepted else set()
    return [contact_out(v, online) for v in views]


@router.post(
    "/",
    response_model=ContactOut,
    status_code=status.HTTP_201_CREATED,
    summary="Ask someone to be a contact, by friend_id or username (accepts at once if they asked you)",
    responses=errors(
        e404="No user has this id or name (`user_not_found`).",
        e409="Already asked, or already a contact (`duplicate`), or you named yourself (`self_contact`).",
    ),
)
async def add_contact(body: ContactAdd, user: CurrentUser, request: Request, session: Session) -> ContactOut:
    if body.friend_id is not None:
        friend = await accounts.get(session, body.friend_id)
        who = f"id {body.friend_id}"
    else:
        friend = await accounts.get_by_username(session, body.username or "")
        who = f"name '{body.username}'"
    if (friend is not None and friend.id == user.id) or body.friend_id == user.id:
        raise Conflict("You cannot add yourself as a contact.", code=ApiErrorCode.SELF_CONTACT)
    if friend is None:
        raise NotFound(f"There is no user with {who}.", code=ApiErrorCode.USER_NOT_FOUND)
    if await block_store.is_blocked(session, user.id, friend.id):
        raise Conflict(f"You have blocked {friend.username}; unblock them first.", code=ApiErrorCode.BLOCKED)
    until = await block_store.cooldown_until(session, user.id, friend.id)
    if until is not None:
        wait = (until - utcnow()).total_seconds()
        raise TooManyRequests(
            f"{friend.username} declined your request; you can ask again after {until:%Y-%m-%d %H:%M} UTC.",
            retry_after=wait,
        )
    # A blocked asker's request is kept as their own pending row, but never reaches the blocker.
    hidden = await block_store.is_blocked(session, friend.id, user.id)
    try:
        view = await contact_store.add(session, user.id, friend.id)
    except DuplicateContact as exc:
        raise Conflict(
            f"{friend.username} is already in your contacts or has your request.", code=ApiErrorCode.DUPLICATE
        ) from exc
    await session.commit()
    out = (await _outs(request, [view]))[0]
    if hidden:
        return out
    asked = out.status == ContactStatus.PENDING  # else they had asked first: accepted at once
    await _tell(request, session, ContactEvent.REQUESTED if asked else ContactEvent.ACCEPTED, user, friend)
    return out


@router.get("/", response_model=list[ContactOut], summary="Your contacts and sent requests, with presence")
async def list_contacts(
    user: CurrentUser,
    request: Request,
    session: Session,
    skip: Skip = 0,
    limit: Limit = 50,
    status: Annotated[ContactStatus | None, Query(description="only rows with this status")] = None,
    group: Annotated[str | None, Query(max_length=64, description="only rows in this group")] = None,
) -> list[ContactOut]:
    views = await contact_store.list_own(
        session, user.id, status=status.value if status else None, group=group, skip=skip, limit=limit
    )
    return await _outs(request, list(views))


@router.get("/requests/incoming", response_model=list[ContactOut], summary="Requests waiting for your answer")
async def incoming(
    user: CurrentUser, request: Request, session: Session, skip: Skip = 0, limit: Limit = 50
) -> list[ContactOut]:
    views = await contact_store.incoming_requests(session, user.id, skip=skip, limit=limit)
    return await _outs(request, list(views))


@router.get("/requests/outgoing", response_model=list[ContactOut], summary="Your requests not answered yet")
async def outgoing(
    user: CurrentUser, request: Request, session: Session, skip: Skip = 0, limit: Limit = 50
) -> list[ContactOut]:
    views = await contact_store.outgoing_requests(session, user.id, skip=skip, limit=limit)
    return await _outs(request, list(views))


@router.post(
    "/{user_id:int}/accept",
    response_model=ContactOut,
    summary="Accept the request from user_id",
    responses=errors(e404="No pending request from that user (`no_request`)."),
)
async def accept(user_id: UserIdPath, user: CurrentUser, request: Request, session: Session) -> ContactOut:
    if await block_store.is_blocked(session, user.id, user_id):  # their requests are hidden from you
        raise NotFound(f"There is no pending request from user {user_id}.", code=ApiErrorCode.NO_REQUEST)
    try:
        view = await contact_store.accept(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(
            f"There is no pending request from user {user_id}.", code=ApiErrorCode.NO_REQUEST
        ) from exc
    await session.commit()
    out = (await _outs(request, [view]))[0]
    await _tell(request, session, ContactEvent.ACCEPTED, user, view.other)
    return out


@router.post(
    "/{user_id:int}/decline",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Decline the request from user_id",
    responses=errors(e404="No pending request from that user (`no_request`)."),
)
async def decline(user_id: UserIdPath, user: CurrentUser, request: Request, session: Session) -> Response:
    if await block_store.is_blocked(session, user.id, user_id):
        raise NotFound(f"There is no pending request from user {user_id}.", code=ApiErrorCode.NO_REQUEST)
    try:
        await contact_store.decline(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(
            f"There is no pending request from user {user_id}.", code=ApiErrorCode.NO_REQUEST
        ) from exc
    cooldown = timedelta(seconds=request.app.state.settings.contact_decline_cooldown_seconds)
    await block_store.start_cooldown(session, user_id, user.id, cooldown)  # survives a deleted row
    await session.commit()
    asker = await accounts.get(session, user_id)
    if asker is not None:
        await _tell(request, session, ContactEvent.DECLINED, user, asker)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{user_id:int}",
    response_model=ContactOut,
    summary="Set your group and/or remark for a contact (null clears)",
    responses=errors(e404="That user is not in your contacts (`not_a_contact`)."),
)
async def update_contact(
    user_id: UserIdPath, body: ContactUpdate, user: CurrentUser, request: Request, session: Session
) -> ContactOut:
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    try:
        view = await contact_store.update_labels(session, user.id, user_id, **changes)
    except StoreNotFound as exc:
        raise NotFound(f"User {user_id} is not in your contacts.", code=ApiErrorCode.NOT_A_CONTACT) from exc
    await session.commit()
    out = (await _outs(request, [view]))[0]
    await _tell(request, session, ContactEvent.UPDATED, user, view.other)
    return out


@router.delete(
    "/{user_id:int}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a contact (both directions), or withdraw a request",
    responses=errors(e404="That user is not in your contacts (`not_a_contact`)."),
)
async def remove_contact(
    user_id: UserIdPath, user: CurrentUser, request: Request, session: Session
) -> Response:
    me = Who(user.id, user.username)  # the delete expires the session's rows, `user` among them
    try:
        await contact_store.remove(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(f"User {user_id} is not in your contacts.", code=ApiErrorCode.NOT_A_CONTACT) from exc
    await session.commit()
    request.app.state.hub.forget_reach()  # the hub stops relaying between the two at once
    other = await accounts.get(session, user_id)
    if other is not None:
        await _tell(request, session, ContactEvent.REMOVED, me, Who(other.id, other.username))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
