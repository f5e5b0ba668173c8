"""The local API's group calls (issue 13): `group.*`, mapped onto `Peer`'s group methods.

A group is named by `group`: its name ("climbing" or "#climbing") or its id ("#<id>", "g:<id>");
group names are labels, not unique, so an ambiguous name is an error that lists the ids. Users
are named as everywhere else (username or id). The list and the member list come from what this
device verified (they work offline); changes need the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peer.resident.api import BadInput, _str, method, resolve

if TYPE_CHECKING:
    from peer.node import Peer
    from peer.resident.node import ResidentNode


async def _group(peer: Peer, params: dict[str, Any]) -> str:
    ref = _str(params, "group")
    assert ref is not None
    return await peer.resolve_group(ref)


async def _users(peer: Peer, params: dict[str, Any], key: str) -> list[int]:
    value = params.get(key, [])
    values = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
        raise BadInput(f"the parameter {key!r} must be a username or a list of usernames")
    return [await resolve(peer, str(v)) for v in values]


async def _one_user(peer: Peer, params: dict[str, Any]) -> int:
    who = _str(params, "who")
    assert who is not None
    return await resolve(peer, who)


@method("group.create")
async def group_create(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    name = _str(params, "name")
    assert name is not None
    if not name.strip():
        raise BadInput("a group needs a name")
    members = await _users(peer, params, "members")
    return (await peer.create_group(name.removeprefix("#"), members)).to_dict()


@method("group.add")
async def group_add(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    group_id = await _group(peer, params)
    users = await _users(peer, params, "who")
    if not users:
        raise BadInput("group.add needs 'who': the users to add")
    return (await peer.add_group_members(group_id, users)).to_dict()


@method("group.remove")
async def group_remove(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    group_id = await _group(peer, params)
    return (await peer.remove_group_member(group_id, await _one_user(peer, params))).to_dict()


@method("group.promote")
async def group_promote(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    group_id = await _group(peer, params)
    return (await peer.promote_group_member(group_id, await _one_user(peer, params))).to_dict()


@method("group.rename")
async def group_rename(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    group_id = await _group(peer, params)
    name = _str(params, "name")
    assert name is not None
    if not name.strip():
        raise BadInput("a group needs a name")
    return (await peer.rename_group(group_id, name)).to_dict()


@method("group.leave")
async def group_leave(node: ResidentNode, params: dict[str, Any]) -> dict[str, Any]:
    peer = node.require_peer()
    group_id = await _group(peer, params)
    await peer.leave_group(group_id)
    return {"group_id": group_id, "left": True}


@method("group.list")
async def group_list(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [g.to_dict() for g in await node.require_peer().groups()]


@method("group.members")
async def group_members(node: ResidentNode, params: dict[str, Any]) -> list[dict[str, Any]]:
    peer = node.require_peer()
    return [m.to_dict() for m in await peer.group_members(await _group(peer, params))]
