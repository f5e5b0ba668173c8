"""Contacts: ask, accept, decline, label, remove, list.

Online state and last-seen are shown only for accepted contacts: a pending request must not reveal
when someone is around. Online state comes from `app.state.presence` (the hub's view).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from signalling.deps import CurrentUser, Session
from signalling.errors import BadRequest, Conflict, Invalid, NotFound
from signalling.presence import PresenceView
from signalling.protocol import ContactAdd, ContactDirection, ContactOut, ContactStatus, ContactUpdate
from store import accounts
from store import contacts as contact_store
from store.contacts import ContactView
from store.errors import DuplicateContact
from store.errors import NotFound as StoreNotFound

router = APIRouter(prefix="/me/contacts", tags=["contacts"])

Skip = Annotated[int, Query(ge=0, description="rows to skip")]
Limit = Annotated[int, Query(ge=1, le=100, description="rows to return, at most 100")]


def contact_out(view: ContactView, online: set[int]) -> ContactOut:
    accepted = view.contact.status == ContactStatus.ACCEPTED
    return ContactOut(
        user_id=view.other.id,
        username=view.other.username,
        status=ContactStatus(view.contact.status),
        direction=ContactDirection(view.direction),
        group=view.contact.group_name,
        remark=view.contact.remark,
        online=accepted and view.other.id in online,
        last_seen=view.other.last_seen if accepted else None,
        created_at=view.contact.created_at,
    )


def _presence(request: Request) -> PresenceView:
    return request.app.state.presence


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
    responses={
        400: {"description": "yourself"},
        404: {"description": "no such user"},
        409: {"description": "already asked or already a contact"},
    },
)
async def add_contact(body: ContactAdd, user: CurrentUser, request: Request, session: Session) -> ContactOut:
    if (body.friend_id is None) == (body.username is None):
        raise Invalid("Invalid request: give exactly one of friend_id or username.")
    if body.friend_id is not None:
        friend = await accounts.get(session, body.friend_id)
        who = f"id {body.friend_id}"
    else:
        friend = await accounts.get_by_username(session, body.username or "")
        who = f"name '{body.username}'"
    if (friend is not None and friend.id == user.id) or body.friend_id == user.id:
        raise BadRequest("You cannot add yourself as a contact.", code="self_contact")
    if friend is None:
        raise NotFound(f"There is no user with {who}.", code="user_not_found")
    try:
        view = await contact_store.add(session, user.id, friend.id)
    except DuplicateContact as exc:
        raise Conflict(
            f"{friend.username} is already in your contacts or has your request.", code="duplicate"
        ) from exc
    await session.commit()
    return (await _outs(request, [view]))[0]


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
    "/{user_id}/accept",
    response_model=ContactOut,
    summary="Accept the request from user_id",
    responses={404: {"description": "no pending request from that user"}},
)
async def accept(user_id: int, user: CurrentUser, request: Request, session: Session) -> ContactOut:
    try:
        view = await contact_store.accept(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(f"There is no pending request from user {user_id}.", code="no_request") from exc
    await session.commit()
    return (await _outs(request, [view]))[0]


@router.post(
    "/{user_id}/decline",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Decline the request from user_id",
    responses={404: {"description": "no pending request from that user"}},
)
async def decline(user_id: int, user: CurrentUser, session: Session) -> Response:
    try:
        await contact_store.decline(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(f"There is no pending request from user {user_id}.", code="no_request") from exc
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{user_id}",
    response_model=ContactOut,
    summary="Set your group and/or remark for a contact (null clears)",
    responses={404: {"description": "not in your contacts"}},
)
async def update_contact(
    user_id: int, body: ContactUpdate, user: CurrentUser, request: Request, session: Session
) -> ContactOut:
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    try:
        view = await contact_store.update_labels(session, user.id, user_id, **changes)
    except StoreNotFound as exc:
        raise NotFound(f"User {user_id} is not in your contacts.", code="not_a_contact") from exc
    await session.commit()
    return (await _outs(request, [view]))[0]


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a contact (both directions), or withdraw a request",
    responses={404: {"description": "not in your contacts"}},
)
async def remove_contact(user_id: int, user: CurrentUser, request: Request, session: Session) -> Response:
    try:
        await contact_store.remove(session, user.id, user_id)
    except StoreNotFound as exc:
        raise NotFound(f"User {user_id} is not in your contacts.", code="not_a_contact") from exc
    await session.commit()
    request.app.state.hub.forget_reach()  # the hub stops relaying between the two at once
    return Response(status_code=status.HTTP_204_NO_CONTENT)
