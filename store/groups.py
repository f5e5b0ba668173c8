"""Groups: who is in which group with which role, and the group's signed membership records.

The rules the server keeps (docs/server.md "Groups"): a group is created by a user, who becomes its
first admin; admins add (only their own accepted contacts), remove, promote and rename; anyone
leaves; when the last admin leaves, the oldest member (the earliest added) becomes admin; an admin
deletes the group. Every change but deletion comes with a membership record signed on an admin's
device (`crypto.groupstate`), stored here in chain order as opaque bytes: `expected_version` must
equal the number of records stored, so two admins changing the group at once cannot both append
at one position (the second hears `StaleGroupVersion` and signs again on the new state).

Members' devices verify the chain themselves; the server's list is for routing only. Nothing here
knows about HTTP or WebSockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from store.errors import Conflict, NotFound, QuotaExceeded, StoreError
from store.models import Block, Contact, Device, Group, GroupMember, GroupRecord, User, utcnow

ADMIN, MEMBER = "admin", "member"  # protocol.GroupRole values; the store does not import the protocol
ACCEPTED = "accepted"


class GroupError(StoreError):
    """Base of the group repository's own refusals."""


class GroupNotFound(GroupError, NotFound):
    def __init__(self, public_id: str) -> None:
        super().__init__(f"there is no group {public_id} that you are a member of")
        self.public_id = public_id


class GroupIdTaken(GroupError, Conflict):
    def __init__(self, public_id: str) -> None:
        super().__init__(f"a group with id {public_id} exists already; pick another random id")


class NotGroupAdmin(GroupError):
    def __init__(self, public_id: str) -> None:
        super().__init__(f"only an admin of group {public_id} may do that")


class NotYourContacts(GroupError):
    def __init__(self, user_ids: Sequence[int]) -> None:
        super().__init__(
            "you can add only your accepted contacts; not: " + ", ".join(str(u) for u in user_ids)
        )
        self.user_ids = list(user_ids)


class AlreadyMembers(GroupError, Conflict):
    def __init__(self, user_ids: Sequence[int]) -> None:
        super().__init__("already members: " + ", ".join(str(u) for u in user_ids))
        self.user_ids = list(user_ids)


class NotMembers(GroupError, NotFound):
    def __init__(self, user_ids: Sequence[int]) -> None:
        super().__init__("not members: " + ", ".join(str(u) for u in user_ids))
        self.user_ids = list(user_ids)


class CannotRemoveSelf(GroupError):
    def __init__(self) -> None:
        super().__init__("you cannot remove yourself; leave the group instead")


class GroupFull(GroupError, QuotaExceeded):
    def __init__(self, limit: int, what: str = "members") -> None:
        super().__init__(f"a group holds at most {limit} {what}")
        self.limit = limit


class TooManyGroups(GroupError, QuotaExceeded):
    def __init__(self, limit: int) -> None:
        super().__init__(f"a user may be in at most {limit} groups")
        self.limit = limit


class StaleGroupVersion(GroupError, Conflict):
    def __init__(self, public_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"group {public_id} has {actual} membership records, not {expected}: it changed meanwhile; "
            "fetch the new records, verify them and sign your change again"
        )
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class GroupView:
    """A group as one member sees it."""

    pk: int
    public_id: str
    name: str
    version: int
    created_by: int | None
    created_at: datetime
    role: str
    member_count: int


@dataclass(frozen=True)
class MemberView:
    user_id: int
    username: str
    role: str
    joined_at: datetime
    added_by: int | None


@dataclass(frozen=True)
class Change:
    """What a change did, for telling the members: who is affected, who is in it afterwards."""

    group: Group
    affected: list[int]  # added, removed, promoted, or the leaver
    promoted: list[int]  # besides `affected`: who became admin because the last admin left
    audience: list[int]  # everyone to tell: the members after, and whoever left or was removed
    deleted: bool = False
    record: bytes | None = None  # the signed record this change appended (none for a deletion)


@dataclass(frozen=True, slots=True)
class GroupSummary:
    public_id: str
    name: str
    version: int
    role: str


# --------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------


async def _group(session: AsyncSession, public_id: str) -> Group:
    group = (await session.execute(select(Group).where(Group.public_id == public_id))).scalar_one_or_none()
    if group is None:
        raise GroupNotFound(public_id)
    return group


async def _membership(session: AsyncSession, group_pk: int, user_id: int) -> GroupMember | None:
    stmt = select(GroupMember).where(GroupMember.group_id == group_pk, GroupMember.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def _count(session: AsyncSession, group_pk: int) -> int:
    stmt = select(func.count()).select_from(GroupMember).where(GroupMember.group_id == group_pk)
    return int((await session.execute(stmt)).scalar_one())


async def _member_ids(session: AsyncSession, group_pk: int) -> list[int]:
    stmt = select(GroupMember.user_id).where(GroupMember.group_id == group_pk).order_by(GroupMember.id)
    return list((await session.execute(stmt)).scalars())


async def group_row(session: AsyncSession, group_pk: int) -> Group:
    return (await session.execute(select(Group).where(Group.id == group_pk))).scalar_one()


async def roles(session: AsyncSession, group_pk: int) -> dict[int, str]:
    """Every member's role, in joining order."""
    stmt = select(GroupMember.user_id, GroupMember.role).where(GroupMember.group_id == group_pk)
    return {int(u): str(r) for u, r in (await session.execute(stmt.order_by(GroupMember.id))).all()}


async def _view(session: AsyncSession, group: Group, user_id: int) -> GroupView:
    me = await _membership(session, group.id, user_id)
    if me is None:
        raise GroupNotFound(group.public_id)
    return GroupView(
        group.id, group.public_id, group.name, group.version, group.created_by, group.created_at,
        me.role, await _count(session, group.id),
    )  # fmt: skip


async def get_for_member(session: AsyncSession, public_id: str, user_id: int) -> GroupView:
    """The group as `user_id` sees it; GroupNotFound unless they are a member (no existence leak)."""
    return await _view(session, await _group(session, public_id), user_id)


async def list_for_user(
    session: AsyncSession, user_id: int, *, skip: int = 0, limit: int = 50
) -> list[GroupView]:
    counts = select(GroupMember.group_id, func.count().label("n")).group_by(GroupMember.group_id).subquery()
    stmt = (
        select(Group, GroupMember.role, counts.c.n)
        .join(GroupMember, and_(GroupMember.group_id == Group.id, GroupMember.user_id == user_id))
        .join(counts, counts.c.group_id == Group.id)
        .order_by(func.lower(Group.name), Group.id)
        .offset(skip)
        .limit(limit)
    )
    return [
        GroupView(g.id, g.public_id, g.name, g.version, g.created_by, g.created_at, role, int(n))
        for g, role, n in (await session.execute(stmt)).all()
    ]


async def members(
    session: AsyncSession, public_id: str, viewer: int, *, skip: int = 0, limit: int = 100
) -> list[MemberView]:
    """Members in joining order (the oldest first), a page at a time; only members may look."""
    group = await _group(session, public_id)
    if await _membership(session, group.id, viewer) is None:
        raise GroupNotFound(public_id)
    stmt = (
        select(GroupMember, User.username)
        .join(User, User.id == GroupMember.user_id)
        .where(GroupMember.group_id == group.id)
        .order_by(GroupMember.id)
        .offset(skip)
        .limit(limit)
    )
    return [
        MemberView(m.user_id, name, m.role, m.joined_at, m.added_by)
        for m, name in (await session.execute(stmt)).all()
    ]


async def records(
    session: AsyncSession, public_id: str, viewer: int, *, after: int = -1, limit: int = 500
) -> list[tuple[int, bytes]]:
    """The membership records after seq `after`, in chain order: (seq, opaque record bytes)."""
    group = await _group(session, public_id)
    if await _membership(session, group.id, viewer) is None:
        raise GroupNotFound(public_id)
    stmt = (
        select(GroupRecord.seq, GroupRecord.record)
        .where(GroupRecord.group_id == group.id, GroupRecord.seq > after)
        .order_by(GroupRecord.seq)
        .limit(limit)
    )
    return [(int(seq), bytes(raw)) for seq, raw in (await session.execute(stmt)).all()]


async def member_devices(
    conn: AsyncConnection, public_id: str, sender: int, *, after: str = "", limit: int | None = None
) -> tuple[int, list[tuple[int, str]]] | None:
    """(group pk, [(user id, device id)] of every active device of every member who has not blocked
    `sender`), when `sender` is a member; None otherwise. Ordered by device id, so `after` pages
    through them.

    A member who blocked the sender is left out in this one query (no query per member), for the
    hub's fan-out and the REST listing alike: to the sender they look like a member with no active
    device, the same story the hub tells when the sender names one of their devices (issue #11).
    """
    group_pk = (await conn.execute(select(Group.id).where(Group.public_id == public_id))).scalar_one_or_none()
    if group_pk is None:
        return None
    is_member = (
        await conn.execute(
            select(GroupMember.id).where(GroupMember.group_id == group_pk, GroupMember.user_id == sender)
        )
    ).first()
    if is_member is None:
        return None
    stmt = (
        select(Device.user_id, Device.device_id)
        .join(GroupMember, GroupMember.user_id == Device.user_id)
        .where(
            GroupMember.group_id == group_pk,
            Device.revoked_at.is_(None),
            Device.device_id > after,
            ~_has_blocked(Device.user_id, sender),
        )
        .order_by(Device.device_id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return int(group_pk), [(int(u), str(d)) for u, d in (await conn.execute(stmt)).all()]


def _has_blocked(blocker: Any, blocked: int) -> Any:
    """SQL: `blocker` (a column) has blocked user `blocked`."""
    return exists().where(Block.blocker_id == blocker, Block.blocked_id == blocked)


async def hidden_devices(
    conn: AsyncConnection, group_pk: int, sender: int, device_ids: Sequence[str]
) -> set[str]:
    """Those of `device_ids` that are active devices of a member of the group who has blocked
    `sender`: a group send that names them skips them quietly instead of refusing (the sender must
    not learn of the block)."""
    if not device_ids:
        return set()
    stmt = (
        select(Device.device_id)
        .join(GroupMember, GroupMember.user_id == Device.user_id)
        .where(
            GroupMember.group_id == group_pk,
            Device.device_id.in_(list(device_ids)),
            Device.revoked_at.is_(None),
            _has_blocked(Device.user_id, sender),
        )
    )
    return {str(d) for d in (await conn.execute(stmt)).scalars()}


async def summaries(conn: AsyncConnection, user_id: int) -> list[GroupSummary]:
    """Every group of the user, with the version a device compares against what it verified."""
    stmt = (
        select(Group.public_id, Group.name, Group.version, GroupMember.role)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user_id)
        .order_by(Group.id)
    )
    return [GroupSummary(p, n, int(v), r) for p, n, v, r in (await conn.execute(stmt)).all()]


async def share_a_group(conn: AsyncConnection, a: int, b: int) -> bool:
    """True when users `a` and `b` are members of one group (they may then reach each other's
    devices: sender keys travel pairwise, and direct links carry group messages)."""
    other = select(GroupMember.group_id).where(GroupMember.user_id == b)
    stmt = select(GroupMember.id).where(GroupMember.user_id == a, GroupMember.group_id.in_(other)).limit(1)
    return (await conn.execute(stmt)).first() is not None


async def is_member(conn: AsyncConnection, public_id: str, user_id: int) -> int | None:
    """The group's pk when `user_id` is a member of it, else None."""
    stmt = (
        select(Group.id)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(Group.public_id == public_id, GroupMember.user_id == user_id)
    )
    found = (await conn.execute(stmt)).scalar_one_or_none()
    return None if found is None else int(found)


async def user_ids_of(conn: AsyncConnection, public_id: str) -> list[int]:
    stmt = (
        select(GroupMember.user_id)
        .join(Group, Group.id == GroupMember.group_id)
        .where(Group.public_id == public_id)
        .order_by(GroupMember.id)
    )
    return [int(u) for u in (await conn.execute(stmt)).scalars()]


# --------------------------------------------------------------------------------------------------
# Changes: each takes the signed record and appends it at `expected_version`
# --------------------------------------------------------------------------------------------------


async def _not_contacts(session: AsyncSession, owner_id: int, user_ids: Sequence[int]) -> list[int]:
    if not user_ids:
        return []
    stmt = select(Contact.friend_id).where(
        Contact.owner_id == owner_id, Contact.status == ACCEPTED, Contact.friend_id.in_(list(user_ids))
    )
    friends = set((await session.execute(stmt)).scalars())
    return sorted(set(user_ids) - friends)


async def _group_count(session: AsyncSession, user_id: int) -> int:
    stmt = select(func.count()).select_from(GroupMember).where(GroupMember.user_id == user_id)
    return int((await session.execute(stmt)).scalar_one())


async def _check_room(session: AsyncSession, user_ids: Sequence[int], max_groups_per_user: int) -> None:
    if not user_ids:
        return
    stmt = (
        select(GroupMember.user_id, func.count())
        .where(GroupMember.user_id.in_(list(user_ids)))
        .group_by(GroupMember.user_id)
    )
    for _, n in (await session.execute(stmt)).all():
        if int(n) >= max_groups_per_user:
            raise TooManyGroups(max_groups_per_user)


async def _append(session: AsyncSession, group: Group, expected_version: int, record: bytes) -> None:
    # A guarded bump: only one writer can move the version from `expected_version`, on SQLite and on
    # PostgreSQL alike (the UPDATE takes the row lock; the loser sees zero rows).
    result = await session.execute(
        update(Group)
        .where(Group.id == group.id, Group.version == expected_version)
        .values(version=expected_version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        actual = (await session.execute(select(Group.version).where(Group.id == group.id))).scalar_one()
        raise StaleGroupVersion(group.public_id, expected_version, int(actual))
    session.add(GroupRecord(group_id=group.id, seq=expected_version, record=record, created_at=utcnow()))
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise StaleGroupVersion(group.public_id, expected_version, expected_version + 1) from exc
    await session.refresh(group)


async def _admin_group(session: AsyncSession, public_id: str, actor: int) -> Group:
    group = await _group(session, public_id)
    me = await _membership(session, group.id, actor)
    if me is None:
        raise GroupNotFound(public_id)
    if me.role != ADMIN:
        raise NotGroupAdmin(public_id)
    return group


async def create(
    session: AsyncSession,
    creator: int,
    public_id: str,
    name: str,
    member_ids: Sequence[int],
    record: bytes,
    *,
    max_members: int,
    max_groups_per_user: int,
) -> GroupView:
    """A new group: `creator` admin, `member_ids` (their accepted contacts) members, in list order."""
    wanted = [u for u in dict.fromkeys(member_ids) if u != creator]
    if 1 + len(wanted) > max_members:
        raise GroupFull(max_members)
    strangers = await _not_contacts(session, creator, wanted)
    if strangers:
        raise NotYourContacts(strangers)
    await _check_room(session, [creator, *wanted], max_groups_per_user)
    exists = await session.execute(select(Group.id).where(Group.public_id == public_id))
    if exists.first() is not None:
        raise GroupIdTaken(public_id)
    now = utcnow()
    group = Group(public_id=public_id, name=name, created_by=creator, version=1, created_at=now)
    session.add(group)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise GroupIdTaken(public_id) from exc
    session.add(GroupMember(group_id=group.id, user_id=creator, role=ADMIN, joined_at=now))
    await session.flush()  # the creator's row id is the lowest: the oldest member
    session.add_all(
        [
            GroupMember(group_id=group.id, user_id=u, role=MEMBER, added_by=creator, joined_at=now)
            for u in wanted
        ]
    )
    session.add(GroupRecord(group_id=group.id, seq=0, record=record, created_at=now))
    await session.flush()
    return await _view(session, group, creator)


async def add_members(
    session: AsyncSession,
    public_id: str,
    actor: int,
    user_ids: Sequence[int],
    record: bytes,
    expected_version: int,
    *,
    max_members: int,
    max_groups_per_user: int,
) -> Change:
    group = await _admin_group(session, public_id, actor)
    wanted = list(dict.fromkeys(user_ids))
    current = await _member_ids(session, group.id)
    already = sorted(set(wanted) & set(current))
    if already:
        raise AlreadyMembers(already)
    if len(current) + len(wanted) > max_members:
        raise GroupFull(max_members)
    strangers = await _not_contacts(session, actor, wanted)
    if strangers:
        raise NotYourContacts(strangers)
    await _check_room(session, wanted, max_groups_per_user)
    await _append(session, group, expected_version, record)
    now = utcnow()
    session.add_all(
        [
            GroupMember(group_id=group.id, user_id=u, role=MEMBER, added_by=actor, joined_at=now)
            for u in wanted
        ]
    )
    await session.flush()
    return Change(group, wanted, [], [*current, *wanted], record=record)


async def remove_members(
    session: AsyncSession,
    public_id: str,
    actor: int,
    user_ids: Sequence[int],
    record: bytes,
    expected_version: int,
) -> Change:
    group = await _admin_group(session, public_id, actor)
    gone = list(dict.fromkeys(user_ids))
    if actor in gone:
        raise CannotRemoveSelf()
    current = await _member_ids(session, group.id)
    missing = sorted(set(gone) - set(current))
    if missing:
        raise NotMembers(missing)
    await _append(session, group, expected_version, record)
    await session.execute(
        delete(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id.in_(gone))
    )
    return Change(group, gone, [], current, record=record)


async def promote(
    session: AsyncSession, public_id: str, actor: int, user_id: int, record: bytes, expected_version: int
) -> Change:
    group = await _admin_group(session, public_id, actor)
    target = await _membership(session, group.id, user_id)
    if target is None:
        raise NotMembers([user_id])
    if target.role == ADMIN:
        raise AlreadyMembers([user_id])
    await _append(session, group, expected_version, record)
    target.role = ADMIN
    await session.flush()
    return Change(group, [user_id], [], await _member_ids(session, group.id), record=record)


async def rename(
    session: AsyncSession, public_id: str, actor: int, name: str, record: bytes, expected_version: int
) -> Change:
    group = await _admin_group(session, public_id, actor)
    await _append(session, group, expected_version, record)
    group.name = name
    await session.flush()
    return Change(group, [], [], await _member_ids(session, group.id), record=record)


async def leave(
    session: AsyncSession, public_id: str, user_id: int, record: bytes, expected_version: int
) -> Change:
    """`user_id` leaves; the last admin leaving makes the oldest member admin; the last member
    leaving deletes the group."""
    group = await _group(session, public_id)
    me = await _membership(session, group.id, user_id)
    if me is None:
        raise GroupNotFound(public_id)
    before = await _member_ids(session, group.id)
    await _append(session, group, expected_version, record)
    await session.delete(me)
    await session.flush()
    promoted: list[int] = []
    rest = [u for u in before if u != user_id]
    if not rest:
        await session.execute(delete(Group).where(Group.id == group.id))
        return Change(group, [user_id], [], before, deleted=True, record=record)
    admins = await session.execute(
        select(GroupMember.id).where(GroupMember.group_id == group.id, GroupMember.role == ADMIN).limit(1)
    )
    if admins.first() is None:
        oldest = (
            await session.execute(
                select(GroupMember).where(GroupMember.group_id == group.id).order_by(GroupMember.id).limit(1)
            )
        ).scalar_one()
        oldest.role = ADMIN
        promoted.append(oldest.user_id)
        await session.flush()
    return Change(group, [user_id], promoted, before, record=record)


async def delete_group(session: AsyncSession, public_id: str, actor: int) -> Change:
    group = await _admin_group(session, public_id, actor)
    audience = await _member_ids(session, group.id)
    await session.execute(delete(Group).where(Group.id == group.id))
    return Change(group, [], [], audience, deleted=True)
