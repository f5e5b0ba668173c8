"""The local API's everyday calls (issue 15): block, my devices, account, edit and delete.

Registered into `peer.resident.api.METHODS` when that module loads (its last line imports this
one), so docs/local-api.md's table has one home per feature and the groups work merges apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peer import account
from peer import devices as my_devices
from peer.resident.api import BadInput, _int, _str, check_can_send, method, resolve

if TYPE_CHECKING:
    from peer.resident.node import ResidentNode


def _need(params: dict[str, Any], key: str) -> str:
    value = _str(params, key)
    assert value is not None
    return value


def _password(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise BadInput(f"the parameter {key!r} (a password) is missing")
    return value


# ------------------------------------------------------------------------------------------------
# block
# ------------------------------------------------------------------------------------------------


@method("block")
async def block(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _need(params, "who")
    user_id = await resolve(peer, who)
    if user_id == peer.me.user_id:
        raise BadInput("you cannot block yourself")
    return (await peer.block(user_id)).model_dump(mode="json")


@method("unblock")
async def unblock(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    who = _need(params, "who")
    if who.isdigit():
        user_id = int(who)
    else:  # a blocked user is no contact any more: look in the blocked list first
        listed = {b.username.lower(): b.user_id for b in await peer.blocked()}
        user_id = listed.get(who.lower()) or await resolve(peer, who)
    await peer.unblock(user_id)
    return {"user_id": user_id, "blocked": False}


@method("blocks.list")
async def blocks_list(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [b.model_dump(mode="json") for b in await node.require_peer().blocked()]


# ------------------------------------------------------------------------------------------------
# my devices
# ------------------------------------------------------------------------------------------------


@method("devices.mine")
async def devices_mine(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [d.to_dict() for d in await my_devices.list_own(node.require_peer())]


@method("devices.rename")
async def devices_rename(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    name = _str(params, "name", required=False)
    return (await my_devices.rename(peer, _need(params, "device_id"), name)).to_dict()


@method("devices.revoke")
async def devices_revoke(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    device_id = _need(params, "device_id")
    await my_devices.revoke(node.require_peer(), device_id)
    return {"device_id": device_id, "revoked": True}


@method("devices.send_history")
async def devices_send_history(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    """Run on the old device: the call is the confirmation (the CLI and the UI ask first)."""
    device_id = _need(params, "device_id")
    await node.settle_start()
    sent = await node.require_peer().send_history(device_id)
    return {"device_id": device_id, "sent": sent}


# ------------------------------------------------------------------------------------------------
# account
# ------------------------------------------------------------------------------------------------


@method("account.password")
async def account_password(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    await account.change_password(peer, _password(params, "current"), _password(params, "new"))
    return {"changed": True}


@method("account.email")
async def account_email(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    me = await account.change_email(peer, _need(params, "email"), _password(params, "password"))
    return {"email": me.email}


@method("account.name")
async def account_name(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    me = await account.set_display_name(node.require_peer(), _str(params, "name", required=False))
    return {"username": me.username, "display_name": me.display_name}


@method("account.show")
async def account_show(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    return (await account.me(node.require_peer())).model_dump(mode="json")


@method("account.delete")
async def account_delete(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    await account.delete_account(peer, _password(params, "password"), _need(params, "confirm"))
    await node.lock()  # no session left: the node says `logged_out`
    return {"deleted": True}


# ------------------------------------------------------------------------------------------------
# disappearing messages
# ------------------------------------------------------------------------------------------------


@method("timer")
async def timer(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    """`seconds` given: set the conversation's timer (0: off); else: what it is."""
    peer = node.require_peer()
    who = _need(params, "with")
    user_id = await resolve(peer, who)
    if "seconds" in params:
        seconds = _int(params, "seconds", 0, 0, 28 * 24 * 3600)
        await check_can_send(peer, user_id, who)
        view = await peer.set_timer(user_id, seconds)
        return {"with": user_id, "seconds": seconds, "message": view.to_dict()}
    return {"with": user_id, "seconds": await peer.timer(user_id)}


# ------------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------------


@method("search")
async def search(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    peer = node.require_peer()
    query = _need(params, "query")
    if len(query) > 256:
        raise BadInput("the search is too long (at most 256 characters)")
    who = _str(params, "with", required=False)
    limit = _int(params, "limit", 50, 1, 1000)
    to = await resolve(peer, who) if who else None
    return [m.to_dict() for m in await peer.search_messages(query, to, limit)]


# ------------------------------------------------------------------------------------------------
# edit and delete
# ------------------------------------------------------------------------------------------------


def _message_id(params: dict[str, Any]) -> str:
    value = _need(params, "id").lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise BadInput(f"{value!r} is not a message id (32 hex digits; `peerpost history --json` shows them)")
    return value


@method("message.edit")
async def message_edit(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    text = params.get("text")
    if not isinstance(text, str):
        raise BadInput("the parameter 'text' must be text")
    return (await peer.edit_message(_message_id(params), text)).to_dict()


@method("message.delete")
async def message_delete(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    everyone = bool(params.get("everyone", False))
    message_id = _message_id(params)
    await peer.delete_message(message_id, for_everyone=everyone)
    return {"id": message_id, "deleted": True, "for_everyone": everyone}
