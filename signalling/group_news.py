"""Telling a group's members of a membership change, once it is committed.

Each receiver hears a `group` frame (signalling.protocol.GroupFrame) on every live device, with
their own view of the group after the change (None when they are out of it); a receiver the
change put out also gets the change's signed record, which it can no longer fetch (the records
route answers members only), so its devices can verify who removed it. Devices that are away
catch up when they connect: the hub sends a `groups` frame with every group's version right after
the mailbox drain (signalling.delivery). Pushing is best effort and never undoes or fails the
committed change. This module writes nothing to the database.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from signalling.presence import LiveSockets
from signalling.protocol import GroupEvent, GroupFrame, GroupOut, GroupRole, b64encode
from store import groups as group_store
from store.groups import Change, GroupView

log = logging.getLogger(__name__)


def group_out(view: GroupView) -> GroupOut:
    return GroupOut(
        group_id=view.public_id,
        name=view.name,
        role=GroupRole(view.role),
        member_count=view.member_count,
        version=view.version,
        created_by=view.created_by,
        created_at=view.created_at,
    )


async def tell_members(
    session: AsyncSession, live: LiveSockets, event: GroupEvent, change: Change, by_user: int
) -> None:
    """Push `event` to every user of `change.audience` (members after, and whoever left)."""
    group = change.group
    roles = {} if change.deleted else await group_store.roles(session, group.id)
    record = None if change.record is None else b64encode(change.record)
    for user_id in dict.fromkeys(change.audience):
        view = None
        if user_id in roles:
            view = GroupOut(
                group_id=group.public_id,
                name=group.name,
                role=GroupRole(roles[user_id]),
                member_count=len(roles),
                version=group.version,
                created_by=group.created_by,
                created_at=group.created_at,
            )
        frame = GroupFrame(
            event=event,
            group_id=group.public_id,
            name=group.name,
            version=group.version,
            by_user=by_user,
            user_ids=change.affected,
            promoted=change.promoted,
            group=view,
            record=record if view is None else None,  # members fetch the chain themselves
        )
        try:
            await live.push_to_user(user_id, frame.model_dump_json())
        except Exception as exc:  # committed; only the live update is lost
            log.warning("group %s news for user %d not pushed: %s", event.value, user_id, exc)
    live.forget_reach()  # who may reach whom follows the membership at once
