"""The page's everyday calls (issue 15): block and the blocked list, my devices, account,
edit and delete, undo "verified"; and the page events for edits, deletions and removed devices.

Routes are made by `routes(bridge)` and mounted by peer/ui/app.py; `page_events(bridge, peer,
handlers)` adds this module's event translations to the bridge's. They use the same peer calls as
the node's API (peer/devices.py, peer/account.py, `Peer.edit_message` ...), so the CLI and the page
cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peer import account
from peer import devices as my_devices
from peer.events import (
    DeviceRemoved,
    EventHandlers,
    HistoryReceived,
    MessageDeleted,
    MessageEdited,
    SessionReestablished,
)
from peer.ui.bridge import UiError, _errors, conversation_keys
from peer.vocab import ConversationId

if TYPE_CHECKING:
    from peer.node import Peer
    from peer.ui.bridge import PeerBridge


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UiError(f"Fill in the {key.replace('_', ' ')}.", code="bad_request")
    return value


def routes(bridge: PeerBridge) -> list[Route]:
    from peer.ui.app import _api, _json  # the app's error wrapper and body reader

    def peer() -> Peer:
        return bridge._require_peer()

    @_api
    async def blocks(request: Request) -> Response:
        p = peer()
        async with _errors():
            if request.method == "POST":
                body = await _json(request)
                user_id = int(body["user_id"])
                out = await p.block(user_id)
                bridge.events.publish({"type": "contacts_changed"})
                return JSONResponse(out.model_dump(mode="json"), status_code=201)
            rows = await p.blocked()
        return JSONResponse([b.model_dump(mode="json") for b in rows])

    @_api
    async def unblock(request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        async with _errors():
            await peer().unblock(user_id)
        return JSONResponse({"user_id": user_id, "blocked": False})

    @_api
    async def devices(request: Request) -> Response:
        async with _errors():
            rows = await my_devices.list_own(peer())
        return JSONResponse([d.to_dict() for d in rows])

    @_api
    async def device(request: Request) -> Response:
        device_id = str(request.path_params["device_id"])
        async with _errors():
            if request.method == "DELETE":
                await my_devices.revoke(peer(), device_id)
                return JSONResponse({"device_id": device_id, "revoked": True})
            body = await _json(request)
            name = body.get("name")
            if name is not None and not isinstance(name, str):
                raise UiError("A device name must be text.", code="bad_request")
            row = await my_devices.rename(peer(), device_id, name)
        return JSONResponse(row.to_dict())

    @_api
    async def send_history(request: Request) -> Response:
        device_id = str(request.path_params["device_id"])
        async with _errors():
            sent = await peer().send_history(device_id)
        return JSONResponse({"device_id": device_id, "sent": sent})

    @_api
    async def password(request: Request) -> Response:
        body = await _json(request)
        async with _errors():
            await account.change_password(peer(), _text(body, "current"), _text(body, "new"))
        return JSONResponse({"changed": True})

    @_api
    async def email(request: Request) -> Response:
        body = await _json(request)
        async with _errors():
            me = await account.change_email(peer(), _text(body, "email"), _text(body, "password"))
        return JSONResponse({"email": me.email})

    @_api
    async def me(request: Request) -> Response:
        async with _errors():
            if request.method == "PATCH":
                body = await _json(request)
                name = body.get("display_name")
                if name is not None and not isinstance(name, str):
                    raise UiError("A display name must be text.", code="bad_request")
                mine = await account.set_display_name(peer(), name)
            else:
                mine = await account.me(peer())
        return JSONResponse(mine.model_dump(mode="json"))

    @_api
    async def delete_account(request: Request) -> Response:
        body = await _json(request)
        async with _errors():
            await account.delete_account(peer(), _text(body, "password"), _text(body, "confirm"))
        await bridge.logout()
        return JSONResponse(bridge.state())

    @_api
    async def message(request: Request) -> Response:
        message_id = str(request.path_params["message_id"])
        p = peer()
        async with _errors():
            if request.method == "PATCH":
                body = await _json(request)
                view = await p.edit_message(message_id, _text(body, "text"))
                return JSONResponse(bridge._message_json(view))
            everyone = request.query_params.get("for") == "everyone"
            await p.delete_message(message_id, for_everyone=everyone)
        return JSONResponse({"id": message_id, "deleted": True, "for_everyone": everyone})

    @_api
    async def search_messages(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()[:256]
        if not query:
            return JSONResponse([])
        async with _errors():
            found = await peer().search_messages(query, limit=50)
        rows = []
        for view in found:
            other = view.other_user
            where: dict[str, Any]
            if other is None:  # a group's message: found under the group's name
                gid = str(view.conversation.group_id)
                where = {"group_id": gid, "username": peer().group_name(gid) or gid}
            else:
                where = {"user_id": other, "username": bridge._usernames.get(other, f"user {other}")}
            rows.append({**bridge._message_json(view), **where})
        return JSONResponse(rows)

    @_api
    async def timer(request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        p = peer()
        async with _errors():
            if request.method == "POST":
                body = await _json(request)
                seconds = body.get("seconds")
                if isinstance(seconds, bool) or not isinstance(seconds, int):
                    raise UiError("The timer must be a whole number of seconds.", code="bad_request")
                view = await p.set_timer(user_id, seconds)
                return JSONResponse({"seconds": seconds, "message": bridge._message_json(view)})
            return JSONResponse({"seconds": await p.timer(user_id)})

    @_api
    async def unverify(request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        async with _errors():
            await peer().unverify_contact(user_id)
        bridge.events.publish({"type": "contacts_changed"})
        return JSONResponse(await bridge.safety(user_id))

    return [
        Route("/api/blocks", blocks, methods=["GET", "POST"]),
        Route("/api/blocks/{user_id:int}", unblock, methods=["DELETE"]),
        Route("/api/devices", devices, methods=["GET"]),
        Route("/api/devices/{device_id:str}", device, methods=["PATCH", "DELETE"]),
        Route("/api/devices/{device_id:str}/history", send_history, methods=["POST"]),
        Route("/api/account", me, methods=["GET", "PATCH"]),
        Route("/api/account/password", password, methods=["POST"]),
        Route("/api/account/email", email, methods=["POST"]),
        Route("/api/account/delete", delete_account, methods=["POST"]),
        Route("/api/messages/search", search_messages, methods=["GET"]),
        Route("/api/messages/{message_id:str}", message, methods=["PATCH", "DELETE"]),
        Route("/api/safety/{user_id:int}/unverify", unverify, methods=["POST"]),
        Route("/api/conversations/{user_id:int}/timer", timer, methods=["GET", "POST"]),
    ]


def page_events(bridge: PeerBridge, peer: Peer, handlers: EventHandlers) -> EventHandlers:
    """The page's words for edits, deletions, removed devices and re-established sessions."""

    async def changed(ev: MessageEdited) -> None:
        await bridge._publish_message(peer, ev.message.message_id)

    async def deleted(ev: MessageDeleted) -> None:
        if ev.for_everyone:
            await bridge._publish_message(peer, ev.message_id)  # now a tombstone
            return
        where = conversation_keys(ConversationId(ev.conversation))
        bridge.events.publish({"type": "message_removed", **where, "id": ev.message_id})

    def removed(ev: DeviceRemoved) -> None:
        who = bridge._usernames.get(ev.user_id, f"user {ev.user_id}")
        mine = bridge._me is not None and bridge._me.get("user_id") == ev.user_id
        text = f"A device of yours was removed ({ev.device_id})." if mine else f"{who} removed a device."
        bridge.events.publish({"type": "notice", "user_id": ev.user_id, "text": text, "mine": mine})

    def reestablished(ev: SessionReestablished) -> None:
        # A heal (issue 14): said once, in the conversation's timeline (my own device: a notice).
        if bridge._me is not None and bridge._me.get("user_id") == ev.user_id:
            text = f"Secure session with your device {ev.device_id} re-established."
            bridge.events.publish({"type": "notice", "text": text, "mine": True})
            return
        who = bridge._usernames.get(ev.user_id, f"user {ev.user_id}")
        text = f"Secure session with {who} re-established."
        bridge.events.publish({"type": "session_reestablished", "user_id": ev.user_id, "text": text})

    def history(ev: HistoryReceived) -> None:
        text = f"{ev.stored} messages arrived from your other device."
        bridge.events.publish({"type": "notice", "text": text, "mine": True})
        bridge.events.publish({"type": "contacts_changed"})

    return (
        handlers.on(MessageEdited, changed)
        .on(MessageDeleted, deleted)
        .on(DeviceRemoved, removed)
        .on(HistoryReceived, history)
        .on(SessionReestablished, reestablished)
    )
