"""The local API's calls: each JSON-RPC method of the node, mapped onto `Peer`'s public API.

One table (`METHODS`) is the whole scripting interface; docs/local-api.md lists it. Handlers get
plain JSON params, check them, call the peer and return JSON-safe results. They decide what works
offline: names resolve from the local contacts cache first, `contacts.list` falls back to the cache
when the server is down, history and keys are local anyway. Errors stay `PeerError`s here; the
node turns them into JSON-RPC errors at its edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peer.errors import ConfigError, PeerError, ServerUnavailable, UnknownContact

if TYPE_CHECKING:
    from peer.node import Peer
    from peer.resident.node import ResidentNode

MAX_TEXT_CHARS = 64 * 1024
MAX_HISTORY = 10_000

Handler = Callable[["ResidentNode", dict[str, Any]], Awaitable[Any]]
METHODS: dict[str, Handler] = {}


class BadInput(PeerError):
    """A request whose values cannot be used (empty text, a limit out of range...)."""


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn

    return register


def _str(params: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise BadInput(f"the parameter {key!r} is missing")
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadInput(f"the parameter {key!r} must be text")
    return str(value)


def _int(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadInput(f"the parameter {key!r} must be a whole number from {low} to {high}")
    return value


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------


async def _cached(peer: Peer) -> list[dict[str, Any]]:
    return await peer.cached_contacts()


async def resolve(peer: Peer, who: str) -> int:
    """A user id for a username or id: this user, the local contacts cache, then the server."""
    if who.isdigit():
        return int(who)
    if who.lower() == peer.me.username.lower():
        return peer.me.user_id
    for c in await _cached(peer):
        if str(c.get("username", "")).lower() == who.lower():
            return int(c["user_id"])
    try:
        return await peer.resolve_user(who)
    except ServerUnavailable as e:
        raise UnknownContact(
            f"{who!r} is not in your contacts, and the server that could look the name up is out of reach"
        ) from e


def is_group_ref(who: str) -> bool:
    """ "#NAME", "#<id>" or "g:<id>": a group, wherever a contact is accepted."""
    return who.startswith(("#", "g:"))


async def group_conversation(peer: Peer, who: str) -> str:
    """The conversation id of a group reference (an ambiguous name is an error listing the ids)."""
    return f"g:{await peer.resolve_group(who)}"


async def conversation_for(peer: Peer, who: str) -> str | int:
    """A group's conversation id, or a user id, for `who`."""
    return await group_conversation(peer, who) if is_group_ref(who) else await resolve(peer, who)


async def names(peer: Peer) -> dict[int, str]:
    """User id -> username for everyone this device knows (itself and its cached contacts)."""
    known = {int(c["user_id"]): str(c["username"]) for c in await _cached(peer)}
    known[peer.me.user_id] = peer.me.username
    return known


async def _contact_record(peer: Peer, user_id: int, refresh: bool) -> dict[str, Any] | None:
    if refresh:
        with contextlib.suppress(ServerUnavailable):
            await peer.contacts()  # refreshes the cache
    return next((c for c in await _cached(peer) if int(c["user_id"]) == user_id), None)


async def check_can_send(peer: Peer, user_id: int, who: str) -> None:
    """Refuse (with the reason) to write to someone who is not an accepted contact."""
    if user_id == peer.me.user_id:
        return
    record = await _contact_record(peer, user_id, refresh=False)
    if record is None or record.get("status") != "accepted":
        record = await _contact_record(peer, user_id, refresh=True)  # the cache may lag a push
    if record is None:
        raise UnknownContact(
            f"{who} is not one of your contacts; ask first with `peerpost contacts add {who}`"
        )
    status = record.get("status")
    if status == "accepted":
        return
    if status == "pending":
        if record.get("direction") == "incoming":
            raise UnknownContact(
                f"{who} asked to be your contact; accept first (`peerpost contacts accept {who}`)"
            )
        raise UnknownContact(f"{who} has not accepted your contact request yet")
    raise UnknownContact(f"{who} is not a contact you can write to (the request was {status})")


# ------------------------------------------------------------------------------------------------
# node
# ------------------------------------------------------------------------------------------------


@method("status")
async def status(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    return node.status()


@method("subscribe")
async def subscribe(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("handled by the connection")  # the node answers it itself (it needs the socket)


@method("stop")
async def stop(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    node.request_stop()
    return {"stopping": True}


@method("lock")
async def lock(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    await node.lock()
    return node.status()


@method("unlock")
async def unlock(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    password = params.get("password")
    if not isinstance(password, str) or not password:
        raise BadInput("unlock needs the password")
    await node.unlock(password)
    return node.status()


@method("ui.link")
async def ui_link(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    return {"url": await node.ui_link()}


@method("logout")
async def logout(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    await node.logout()
    return {"logged_out": True}


# ------------------------------------------------------------------------------------------------
# who
# ------------------------------------------------------------------------------------------------


@method("whoami")
async def whoami(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    me = peer.me
    return {
        "user_id": me.user_id,
        "username": me.username,
        "device_id": me.device_id,
        "server": me.server_url,
    }


@method("resolve")
async def resolve_call(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _str(params, "who")
    assert who is not None
    if is_group_ref(who):
        conversation = await group_conversation(peer, who)
        return {
            "conversation": conversation,
            "group_id": conversation[2:],
            "group": peer.group_name(conversation[2:]),
        }
    user_id = await resolve(peer, who)
    return {
        "user_id": user_id,
        "username": (await names(peer)).get(user_id, who),
        "conversation": f"u:{user_id}",
    }


@method("names")
async def names_call(node: ResidentNode, params: dict[str, Any]) -> dict[str, str]:
    return {str(k): v for k, v in (await names(node.require_peer())).items()}


# ------------------------------------------------------------------------------------------------
# contacts
# ------------------------------------------------------------------------------------------------


@method("contacts.list")
async def contacts_list(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    peer = node.require_peer()
    status_filter, group = _str(params, "status", required=False), _str(params, "group", required=False)
    try:
        return [c.model_dump(mode="json") for c in await peer.contacts(status_filter, group)]
    except ServerUnavailable:
        rows = await _cached(peer)  # the server is down: what this device last saw
        return [
            {**c, "online": False}
            for c in rows
            if (status_filter is None or c.get("status") == status_filter)
            and (group is None or c.get("group") == group)
        ]


@method("contacts.requests")
async def contacts_requests(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    incoming, outgoing = await node.require_peer().contact_requests()
    return {
        "incoming": [c.model_dump(mode="json") for c in incoming],
        "outgoing": [c.model_dump(mode="json") for c in outgoing],
    }


@method("contacts.search")
async def contacts_search(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    query = _str(params, "query")
    assert query is not None
    return [u.model_dump(mode="json") for u in await node.require_peer().search(query)]


@method("contacts.add")
async def contacts_add(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    who = _str(params, "who")
    assert who is not None
    return (await node.require_peer().add_contact(who)).model_dump(mode="json")


def _contact_action(name: str) -> None:
    async def action(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
        peer = node.require_peer()
        who = _str(params, "who")
        assert who is not None
        user_id = await resolve(peer, who)
        result = await getattr(peer, f"{name}_contact")(user_id)
        return result.model_dump(mode="json") if hasattr(result, "model_dump") else {"ok": True}

    METHODS[f"contacts.{name}"] = action


for _name in ("accept", "decline", "remove"):
    _contact_action(_name)


@method("contacts.set")
async def contacts_set(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _str(params, "who")
    assert who is not None
    changes = {k: params[k] for k in ("group", "remark") if k in params}
    for key, value in changes.items():
        if value is not None and not isinstance(value, str):
            raise BadInput(f"the {key} must be text")
    if not changes:
        raise BadInput("contacts.set needs 'group' or 'remark'")
    return (await peer.set_contact(await resolve(peer, who), **changes)).model_dump(mode="json")


# ------------------------------------------------------------------------------------------------
# devices and trust
# ------------------------------------------------------------------------------------------------


@method("devices")
async def devices(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    peer = node.require_peer()
    who = _str(params, "who", required=False)
    user_id = await resolve(peer, who) if who else None
    return [d.to_dict() for d in await peer.devices(user_id)]


@method("safety_number")
async def safety_number(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _str(params, "who")
    assert who is not None
    sn = await peer.safety_number(await resolve(peer, who))
    return {
        "user_id": sn.user_id,
        "digits": sn.digits,
        "formatted": sn.formatted,
        "qr": sn.qr_text,
        "verified": sn.verified,
    }


@method("verify")
async def verify(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _str(params, "who")
    assert who is not None
    user_id = await resolve(peer, who)
    if params.get("undo"):
        await peer.unverify_contact(user_id)
        return {"user_id": user_id, "verified": False}
    await peer.accept_key_change(user_id)
    await peer.verify_contact(user_id)
    return {"user_id": user_id, "verified": True}


# ------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------


@method("send")
async def send(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who, text = _str(params, "to"), params.get("text")
    assert who is not None
    if not isinstance(text, str) or not text.strip():
        raise BadInput("the message is empty; write some text to send")
    if len(text) > MAX_TEXT_CHARS:
        raise BadInput(f"the message is too long ({len(text)} characters; at most {MAX_TEXT_CHARS})")
    if is_group_ref(who):
        conversation = await group_conversation(peer, who)
        await node.settle_start()
        return (await peer.send_text(conversation, text)).to_dict()
    user_id = await resolve(peer, who)
    await check_can_send(peer, user_id, who)
    await node.settle_start()
    return (await peer.send_text(user_id, text)).to_dict()


@method("send_file")
async def send_file(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who, raw = _str(params, "to"), _str(params, "path")
    assert who is not None and raw is not None
    path = Path(raw)
    if not path.is_absolute():
        raise BadInput("send_file needs an absolute path (the node does not share your working folder)")
    if not await asyncio.to_thread(path.is_file):
        raise ConfigError(f"there is no file {path}")
    if is_group_ref(who):
        conversation = await group_conversation(peer, who)
        await node.settle_start()
        return (await peer.send_file(conversation, path)).to_dict()
    user_id = await resolve(peer, who)
    await check_can_send(peer, user_id, who)
    await node.settle_start()
    try:
        return (await peer.send_file(user_id, path)).to_dict()
    except ServerUnavailable:
        # No server, hence no blob store and no signalling for a link: remember it, send it later.
        item = node.files.add(user_id, who, str(path), int(time.time() * 1000))
        return {
            "queued": True,
            "queue_id": item.queue_id,
            "kind": "file",
            "file": {"name": path.name, "size": (await asyncio.to_thread(path.stat)).st_size},
            "state": "sending",
            "path": None,
        }


@method("history")
async def history(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    peer = node.require_peer()
    who = _str(params, "with", required=False)
    limit = _int(params, "limit", 50, 1, MAX_HISTORY)
    to = await conversation_for(peer, who) if who else None
    return [m.to_dict() for m in await peer.history(to, limit)]


@method("typing")
async def typing(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _str(params, "to")
    assert who is not None
    await peer.send_typing(await conversation_for(peer, who), bool(params.get("active", True)))
    return {"ok": True}


@method("read")
async def read(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    """Mark messages of a conversation read (`ids`, or every unread one) and tell their senders."""
    peer = node.require_peer()
    who = _str(params, "with")
    assert who is not None
    to = await conversation_for(peer, who)
    ids = params.get("ids")
    if ids is None:
        ids = [m.message_id for m in await peer.history(to, MAX_HISTORY) if m.unread]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadInput("the parameter 'ids' must be a list of message ids")
    return {"read": await peer.mark_read(to, ids)}


from peer.resident import daily_api as _daily_api  # noqa: E402,F401  (registers its calls)
from peer.resident import group_api as _group_api  # noqa: E402,F401  (registers its calls)
