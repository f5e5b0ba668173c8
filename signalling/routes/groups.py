"""Groups: create, list, look at, rename, delete; add, remove, promote members; leave; the member
list and the signed membership records, page by page.

Every membership change carries a record signed on the acting device (crypto.groupstate) and the
version (number of records) it was signed on; the server checks who may do what with its own
membership table, appends the record as opaque bytes and tells every member's live devices
(signalling.group_news). To a non-member a group does not exist (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from signalling.deps import CurrentUser, Session, Skip
from signalling.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from signalling.group_news import group_out, tell_members
from signalling.openapi import errors
from signalling.protocol import (
    ApiErrorCode,
    GroupChange,
    GroupCreate,
    GroupEvent,
    GroupMemberOut,
    GroupMembersChange,
    GroupOut,
    GroupPromote,
    GroupRecordOut,
    GroupRename,
    GroupRole,
    RecipientDevice,
    b64decode,
    b64encode,
)
from signalling.settings import Settings
from store import groups as group_store
from store.errors import StoreError
from store.groups import Change

router = APIRouter(
    prefix="/groups",
    tags=["groups"],
    responses=errors(
        e400="A record that is not base64url (`malformed`), or removing yourself (`remove_self`).",
        e403="Not an admin (`not_an_admin`), or a member who is not your accepted contact (`not_a_contact`).",
        e404="No such group of yours (`not_a_member`).",
        e409="A stale `version` (`stale_version`), a taken id (`group_id_taken`), already done (`already`),\n"
        "or the named users are not members (`not_a_member`).",
        e413="Too many members or groups (`group_full`).",
    ),
)


class GroupTooLarge(ApiError):
    status_code = 413
    code = ApiErrorCode.GROUP_FULL


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _translate(exc: StoreError) -> ApiError:
    """The store's refusals in words for a person, with a stable code for a program."""
    text = str(exc)
    if isinstance(exc, group_store.NotMembers):  # the group exists; the named users are not in it
        return Conflict(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.NOT_A_MEMBER)
    if isinstance(exc, group_store.GroupNotFound):
        return NotFound(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.NOT_A_MEMBER)
    if isinstance(exc, group_store.NotGroupAdmin):
        return Forbidden(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.NOT_AN_ADMIN)
    if isinstance(exc, group_store.NotYourContacts):
        return Forbidden(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.NOT_A_CONTACT)
    if isinstance(exc, group_store.CannotRemoveSelf):
        return BadRequest(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.REMOVE_SELF)
    if isinstance(exc, group_store.GroupFull | group_store.TooManyGroups):
        return GroupTooLarge(text[:1].upper() + text[1:] + ".")
    if isinstance(exc, group_store.StaleGroupVersion):
        return Conflict(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.STALE_VERSION)
    if isinstance(exc, group_store.GroupIdTaken):
        return Conflict(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.GROUP_ID_TAKEN)
    if isinstance(exc, group_store.AlreadyMembers):
        return Conflict(text[:1].upper() + text[1:] + ".", code=ApiErrorCode.ALREADY)
    raise exc


def _record(text: str) -> bytes:
    try:
        return b64decode(text)
    except ValueError as exc:
        raise BadRequest("record: must be unpadded base64url.", code=ApiErrorCode.MALFORMED) from exc


async def _commit_and_tell(
    request: Request, session: Session, event: GroupEvent, change: Change, by_user: int
) -> None:
    await session.commit()
    await tell_members(session, request.app.state.hub, event, change, by_user)


@router.post(
    "",
    response_model=GroupOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a group of you (its admin) and some of your accepted contacts",
    responses={
        403: {"description": "a member is not your accepted contact"},
        409: {"description": "id taken"},
    },
)
async def create_group(body: GroupCreate, user: CurrentUser, request: Request, session: Session) -> GroupOut:
    settings = _settings(request)
    user_id = user.id
    try:
        view = await group_store.create(
            session, user_id, body.group_id, body.name, body.members, _record(body.record),
            max_members=settings.group_max_members, max_groups_per_user=settings.groups_per_user,
        )  # fmt: skip
    except StoreError as exc:
        raise _translate(exc) from exc
    change = Change(
        await group_store.group_row(session, view.pk), [u for u in body.members if u != user_id], [],
        [user_id, *body.members],
    )  # fmt: skip
    await _commit_and_tell(request, session, GroupEvent.CREATED, change, user_id)
    return group_out(view)


@router.get("", response_model=list[GroupOut], summary="Your groups")
async def list_groups(
    user: CurrentUser,
    session: Session,
    skip: Skip = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[GroupOut]:
    return [group_out(v) for v in await group_store.list_for_user(session, user.id, skip=skip, limit=limit)]


@router.get("/{group_id}", response_model=GroupOut, summary="One of your groups")
async def get_group(group_id: str, user: CurrentUser, session: Session) -> GroupOut:
    try:
        return group_out(await group_store.get_for_member(session, group_id, user.id))
    except StoreError as exc:
        raise _translate(exc) from exc


@router.get("/{group_id}/members", response_model=list[GroupMemberOut], summary="Members, oldest first")
async def list_members(
    group_id: str,
    user: CurrentUser,
    session: Session,
    skip: Skip = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[GroupMemberOut]:
    try:
        views = await group_store.members(session, group_id, user.id, skip=skip, limit=limit)
    except StoreError as exc:
        raise _translate(exc) from exc
    return [
        GroupMemberOut(
            user_id=m.user_id,
            username=m.username,
            role=GroupRole(m.role),
            joined_at=m.joined_at,
            added_by=m.added_by,
        )
        for m in views
    ]


@router.get(
    "/{group_id}/records",
    response_model=list[GroupRecordOut],
    summary="The signed membership records after seq `after`, in chain order (verify them on the device)",
)
async def list_records(
    group_id: str,
    user: CurrentUser,
    session: Session,
    after: Annotated[int, Query(ge=-1)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[GroupRecordOut]:
    try:
        rows = await group_store.records(session, group_id, user.id, after=after, limit=limit)
    except StoreError as exc:
        raise _translate(exc) from exc
    return [GroupRecordOut(seq=seq, record=b64encode(raw)) for seq, raw in rows]


@router.get(
    "/{group_id}/devices",
    response_model=list[RecipientDevice],
    summary="Active devices of every member, by device id, after `after` (for fan-out and sender keys)",
)
async def list_devices(
    group_id: str,
    user: CurrentUser,
    request: Request,
    after: Annotated[str, Query(max_length=64)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[RecipientDevice]:
    async with request.app.state.engine.connect() as conn:
        found = await group_store.member_devices(conn, group_id, user.id, after=after, limit=limit)
    if found is None:
        raise NotFound(
            f"There is no group {group_id} that you are a member of.", code=ApiErrorCode.NOT_A_MEMBER
        )
    return [RecipientDevice(user_id=u, device_id=d) for u, d in found[1]]


@router.patch("/{group_id}", response_model=GroupOut, summary="Rename (admins)")
async def rename_group(
    group_id: str, body: GroupRename, user: CurrentUser, request: Request, session: Session
) -> GroupOut:
    user_id = user.id
    try:
        change = await group_store.rename(
            session, group_id, user_id, body.name, _record(body.record), body.version
        )
    except StoreError as exc:
        raise _translate(exc) from exc
    await _commit_and_tell(request, session, GroupEvent.RENAMED, change, user_id)
    return group_out(await group_store.get_for_member(session, group_id, user_id))


@router.post("/{group_id}/members", response_model=GroupOut, summary="Add your accepted contacts (admins)")
async def add_members(
    group_id: str, body: GroupMembersChange, user: CurrentUser, request: Request, session: Session
) -> GroupOut:
    settings = _settings(request)
    user_id = user.id
    try:
        change = await group_store.add_members(
            session, group_id, user_id, body.user_ids, _record(body.record), body.version,
            max_members=settings.group_max_members, max_groups_per_user=settings.groups_per_user,
        )  # fmt: skip
    except StoreError as exc:
        raise _translate(exc) from exc
    await _commit_and_tell(request, session, GroupEvent.MEMBERS_ADDED, change, user_id)
    return group_out(await group_store.get_for_member(session, group_id, user_id))


@router.post("/{group_id}/members/remove", response_model=GroupOut, summary="Remove members (admins)")
async def remove_members(
    group_id: str, body: GroupMembersChange, user: CurrentUser, request: Request, session: Session
) -> GroupOut:
    user_id = user.id
    try:
        change = await group_store.remove_members(
            session, group_id, user_id, body.user_ids, _record(body.record), body.version
        )
    except StoreError as exc:
        raise _translate(exc) from exc
    await _commit_and_tell(request, session, GroupEvent.MEMBERS_REMOVED, change, user_id)
    return group_out(await group_store.get_for_member(session, group_id, user_id))


@router.post("/{group_id}/admins", response_model=GroupOut, summary="Make a member an admin (admins)")
async def promote_member(
    group_id: str, body: GroupPromote, user: CurrentUser, request: Request, session: Session
) -> GroupOut:
    user_id = user.id
    try:
        change = await group_store.promote(
            session, group_id, user_id, body.user_id, _record(body.record), body.version
        )
    except StoreError as exc:
        raise _translate(exc) from exc
    await _commit_and_tell(request, session, GroupEvent.PROMOTED, change, user_id)
    return group_out(await group_store.get_for_member(session, group_id, user_id))


@router.post(
    "/{group_id}/leave",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Leave (the last admin leaving makes the oldest member admin; the last member deletes it)",
)
async def leave_group(
    group_id: str, body: GroupChange, user: CurrentUser, request: Request, session: Session
) -> Response:
    user_id = user.id
    try:
        change = await group_store.leave(session, group_id, user_id, _record(body.record), body.version)
    except StoreError as exc:
        raise _translate(exc) from exc
    event = GroupEvent.DELETED if change.deleted else GroupEvent.LEFT
    await _commit_and_tell(request, session, event, change, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete the group (admins)")
async def delete_group(group_id: str, user: CurrentUser, request: Request, session: Session) -> Response:
    user_id = user.id
    try:
        change = await group_store.delete_group(session, group_id, user_id)
    except StoreError as exc:
        raise _translate(exc) from exc
    await _commit_and_tell(request, session, GroupEvent.DELETED, change, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
