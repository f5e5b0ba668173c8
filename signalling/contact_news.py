"""Telling both people of a contact change, once it is committed.

Contacts change over REST; the two users concerned hear of it on their live sockets as `contact`
frames (signalling.protocol.ContactFrame), pushed through the hub and its backplane so a socket on
any instance hears it. Each receiver gets the change as they see it: the other person, and their
own row after the change (or None when they have none left). The actor's own devices hear it too,
so a second device's list follows without polling.

Pushing is best effort and never undoes or fails the committed change: a device that is away, or a
backplane hiccup, costs only the live update; peers read the lists again after every reconnect.
Nobody but the two users is ever told anything, and a label change (group, remark) is told only to
its owner's devices. This module writes nothing to the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from signalling.presence import LiveSockets, PresenceView
from signalling.protocol import ContactDirection, ContactEvent, ContactFrame, ContactOut, ContactStatus
from store import contacts as contact_store
from store.contacts import ContactView

log = logging.getLogger(__name__)


class Person(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def username(self) -> str: ...


@dataclass(frozen=True)
class Who:
    """A person taken out of the ORM (a row can expire under a delete; this cannot)."""

    id: int
    username: str


def contact_out(view: ContactView, online: set[int]) -> ContactOut:
    """A row as its viewer sees it; presence and last-seen only for accepted contacts."""
    accepted = view.contact.status == ContactStatus.ACCEPTED
    return ContactOut(
        user_id=view.other.id,
        username=view.other.username,
        display_name=view.other.display_name,
        status=ContactStatus(view.contact.status),
        direction=ContactDirection(view.direction),
        group=view.contact.group_name,
        remark=view.contact.remark,
        online=accepted and view.other.id in online,
        last_seen=view.other.last_seen if accepted else None,
        created_at=view.contact.created_at,
    )


async def tell_both(
    session: AsyncSession,
    live: LiveSockets,
    presence: PresenceView,
    event: ContactEvent,
    actor: Person,
    other: Person,
) -> None:
    """Push `event` to `other`'s live devices and to `actor`'s own; on ACCEPTED also introduce the
    two to each other's presence. Call after the commit, with a session that can still read."""
    audience = [(actor, other, True)]
    if event is not ContactEvent.UPDATED:
        audience.insert(0, (other, actor, False))
    for receiver, about, by_me in audience:
        view = await contact_store.view_of(session, receiver.id, about.id)
        row = None
        if view is not None:
            accepted = view.contact.status == ContactStatus.ACCEPTED
            online = await presence.online_among([about.id]) if accepted else set()
            row = contact_out(view, online)
        frame = ContactFrame(event=event, user_id=about.id, username=about.username, by_me=by_me, contact=row)
        try:
            await live.push_to_user(receiver.id, frame.model_dump_json())
        except Exception as exc:  # the change is committed; only the live update is lost
            log.warning("contact %s news for user %d not pushed: %s", event.value, receiver.id, exc)
    if event is ContactEvent.ACCEPTED:
        try:
            await live.introduce(actor.id, other.id)
        except Exception as exc:
            log.warning("presence introduction of users %d and %d failed: %s", actor.id, other.id, exc)


async def tell_removed(live: LiveSockets, gone: Person, audience: list[int]) -> None:
    """`gone` deleted their account: each user who had a row with them hears it was removed."""
    for user_id in audience:
        frame = ContactFrame(event=ContactEvent.REMOVED, user_id=gone.id, username=gone.username)
        try:
            await live.push_to_user(user_id, frame.model_dump_json())
        except Exception as exc:
            log.warning("contact removal news for user %d not pushed: %s", user_id, exc)
