"""The page's group calls (issue 13): the group list, create, members, rename, promote, leave; and
the page event for membership changes.

A group's conversation (messages, files, typing, read) goes through the same routes as a contact's,
under `/api/groups/<id>/…` (peer/ui/app.py); what is here is the membership around it. Every call is
a `Peer` group method (docs/peer.md, "Groups"), the same ones the CLI and the local API use, so
the page holds no group state: the list is read again whenever a `group_changed` event says so.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peer.events import EventHandlers, GroupChanged, GroupWarning
from peer.ui.bridge import UiError, _errors
from peer.vocab import ConversationKind

if TYPE_CHECKING:
    from peer.node import Peer
    from peer.ui.bridge import PeerBridge

GROUP_ID = re.compile(r"[0-9a-f]{32}")
MAX_NAME = 64

# The peer's group views are read by attribute, as docs/peer.md lists them.
GroupView = Any
GroupMemberView = Any


def conversation(group_id: str) -> str:
    """`g:<id>` for a well-formed group id; anything else is a group that does not exist."""
    if not GROUP_ID.fullmatch(group_id):
        raise UiError("There is no such group.", status=404, code="not_found")
    return f"g:{group_id}"


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UiError("Give the group a name.", code="bad_request")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise UiError(f"A group name can be at most {MAX_NAME} characters.", code="bad_request")
    return name


def _user_ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in value):
        raise UiError("Members must be a list of user ids.", code="bad_request")
    return cast(list[int], value)


def group_json(view: GroupView) -> dict[str, Any]:
    return {
        "group_id": view.group_id,
        "name": view.name,
        "role": str(view.role),
        "members": view.members,
        "version": view.version,
        "active": view.active,
    }


def member_json(view: GroupMemberView) -> dict[str, Any]:
    return {
        "user_id": view.user_id,
        "username": view.username,
        "display_name": view.display_name,
        "role": str(view.role),
        "is_me": view.is_me,
    }


async def group_list(bridge: PeerBridge, peer: Peer) -> list[dict[str, Any]]:
    """Every group this device knows (also the ones it is out of), with the last message and the
    unread count, most recent first: the sidebar's group section."""
    views = await peer.groups()
    summaries = {
        s.conversation.group_id: s
        for s in await peer.conversation_summaries()
        if s.conversation.kind is ConversationKind.GROUP
    }
    rows = []
    for view in views:
        summary = summaries.get(view.group_id)
        last = summary.last if summary is not None else None
        if last is not None:
            await bridge._learn_senders(peer, last.conversation, [last])  # "bob: …" in the list
        rows.append(
            {
                **group_json(view),
                "unread": summary.unread if summary is not None else 0,
                "last": bridge._preview(last) if last is not None else None,
                "last_at_ms": summary.last_at_ms if summary is not None else 0,
            }
        )
    rows.sort(key=lambda r: (-cast(int, r["last_at_ms"]), cast(str, r["name"]).lower()))
    return rows


def routes(bridge: PeerBridge) -> list[Route]:
    from peer.ui.app import _api, _json  # the app's error wrapper and body reader

    def peer() -> Peer:
        return bridge._require_peer()

    def group_id(request: Request) -> str:
        return conversation(str(request.path_params["group_id"]))[2:]

    def changed(view: GroupView, status: int = 200) -> Response:
        # Other windows of this profile re-read their list too (the node's event may come later).
        bridge.events.publish({"type": "groups_changed"})
        return JSONResponse(group_json(view), status_code=status)

    @_api
    async def groups(request: Request) -> Response:
        p = peer()
        async with _errors():
            if request.method == "POST":
                body = await _json(request)
                view = await p.create_group(_name(body), _user_ids(body.get("members", [])))
                return changed(view, 201)
            return JSONResponse(await group_list(bridge, p))

    @_api
    async def group(request: Request) -> Response:
        gid = group_id(request)
        p = peer()
        async with _errors():
            if request.method == "PATCH":
                return changed(await p.rename_group(gid, _name(await _json(request))))
            views = {g.group_id: g for g in await p.groups()}
            if gid not in views:
                raise UiError("There is no such group.", status=404, code="not_found")
            members = await p.group_members(gid)
        for m in members:
            bridge._usernames[m.user_id] = m.username  # the names its messages are shown with
        return JSONResponse({"group": group_json(views[gid]), "members": [member_json(m) for m in members]})

    @_api
    async def members(request: Request) -> Response:
        body = await _json(request)
        async with _errors():
            view = await peer().add_group_members(group_id(request), _user_ids(body.get("user_ids")))
        return changed(view)

    @_api
    async def member(request: Request) -> Response:
        gid, user_id = group_id(request), int(request.path_params["user_id"])
        async with _errors():
            return changed(await peer().remove_group_member(gid, user_id))

    @_api
    async def promote(request: Request) -> Response:
        gid, user_id = group_id(request), int(request.path_params["user_id"])
        async with _errors():
            return changed(await peer().promote_group_member(gid, user_id))

    @_api
    async def leave(request: Request) -> Response:
        gid = group_id(request)
        async with _errors():
            await peer().leave_group(gid)
        bridge.events.publish({"type": "groups_changed"})
        return JSONResponse({"group_id": gid, "left": True})

    base = "/api/groups/{group_id:str}"
    return [
        Route("/api/groups", groups, methods=["GET", "POST"]),
        Route(base, group, methods=["GET", "PATCH"]),
        Route(f"{base}/members", members, methods=["POST"]),
        Route(f"{base}/members/{{user_id:int}}", member, methods=["DELETE"]),
        Route(f"{base}/members/{{user_id:int}}/promote", promote, methods=["POST"]),
        Route(f"{base}/leave", leave, methods=["POST"]),
    ]


def page_events(bridge: PeerBridge, handlers: EventHandlers) -> EventHandlers:
    """A verified membership change: the page re-reads its group list, and the open group's
    members and timeline (where the node stored the change as a line)."""

    def group_changed(ev: GroupChanged) -> None:
        bridge.events.publish(
            {
                "type": "group_changed",
                "group_id": ev.group_id,
                "name": ev.name,
                "change": str(ev.change),
                "actor": ev.actor,
                "users": list(ev.users),
            }
        )

    def group_warning(ev: GroupWarning) -> None:
        # The server's account of a group did not verify (a ghost member, a forged or rolled-back
        # chain): the node refused it; the person should know someone tried.
        name = bridge._peer.group_name(ev.group_id) if bridge._peer is not None else None
        text = f"Group {name or ev.group_id}: {ev.reason}"
        bridge.events.publish({"type": "error", "message": text if text.endswith(".") else text + "."})

    return handlers.on(GroupChanged, group_changed).on(GroupWarning, group_warning)
