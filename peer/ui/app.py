"""The local web UI: a Starlette app that serves the page and turns its requests into peer calls.

Routes are thin: they check who is asking (see `security`), parse the request, call the bridge and
turn `UiError` into `{"error": "<sentence>"}` with a fitting status. The page shows that sentence;
it never sees a traceback or a raw server answer. Live events flow over one WebSocket.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from peer.ui import daily, groups
from peer.ui.bridge import PeerBridge, UiError
from peer.ui.security import SESSION_COOKIE, SESSION_MAX_AGE_S, OriginPolicy, RequestRefused, SessionGate

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_JSON_BYTES = 64 * 1024

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>PeerPost</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;background:#f4f6fb;color:#1d2433;display:grid;
place-items:center;min-height:100vh;margin:0}}main{{background:#fff;border-radius:14px;padding:2rem;
max-width:30rem;margin:1rem;box-shadow:0 4px 24px #0001}}h1{{font-size:1.25rem;margin-top:0}}
code{{background:#eef1f7;padding:.1rem .3rem;border-radius:4px}}</style></head>
<body><main><h1>{title}</h1><p>{message}</p></main></body></html>"""


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), message=html.escape(message)), status_code=status
    )


class GuardMiddleware:
    """Refuse foreign Host/Origin on every request, and a missing session on the API and page."""

    OPEN_PATHS = ("/launch", "/static/", "/favicon.ico")

    def __init__(self, app: ASGIApp, policy: OriginPolicy, gate: SessionGate) -> None:
        self.app = app
        self.policy = policy
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        websocket = scope["type"] == "websocket"
        path: str = scope["path"]
        try:
            self.policy.check(
                headers.get("host"), headers.get("origin"), scope.get("method", "GET"), websocket
            )
            if not path.startswith(self.OPEN_PATHS):
                self.gate.check(_cookie(headers.get("cookie", ""), SESSION_COOKIE))
        except RequestRefused as refused:
            if websocket:
                # Close before accepting: the browser sees a failed handshake (HTTP 403).
                await send({"type": "websocket.close", "code": 1008, "reason": refused.code})
                return
            response: Response
            if path.startswith("/api/"):
                response = JSONResponse(
                    {"error": refused.reason, "code": refused.code}, status_code=refused.status
                )
            else:
                response = error_page(refused.status, "PeerPost cannot open this page", refused.reason)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


Handler = Callable[[Request], Awaitable[Response]]


def _conversation(request: Request) -> int | str:
    """The conversation a route names: a contact's user id, or `g:<group id>`."""
    if "user_id" in request.path_params:
        return int(request.path_params["user_id"])
    return groups.conversation(request.path_params["group_id"])


def _api(handler: Handler) -> Handler:
    """Turn bridge errors and malformed bodies into `{"error": ...}` answers the page can show."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except UiError as err:
            return JSONResponse({"error": err.message, "code": err.code}, status_code=err.status)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            return JSONResponse(
                {"error": f"The request was not understood: {err}", "code": "bad_request"},
                status_code=400,
            )
        except Exception:
            log.exception("UI request %s %s failed", request.method, request.url.path)
            return JSONResponse(
                {
                    "error": "Something went wrong inside PeerPost; the details are in its log.",
                    "code": "internal",
                },
                status_code=500,
            )

    return wrapped


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise UiError("That request is too large.", status=413, code="too_large")
    data = json.loads(body or b"{}")
    if not isinstance(data, dict):
        raise UiError("Expected a JSON object.", status=400, code="bad_request")
    return data


def create_ui_app(bridge: PeerBridge, policy: OriginPolicy, gate: SessionGate) -> ASGIApp:
    async def launch(request: Request) -> Response:
        try:
            cookie = gate.redeem(request.query_params.get("token", ""))
        except RequestRefused as refused:
            return error_page(refused.status, "This link has been used", refused.reason)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            path="/",
            # No `secure`: the page is plain http on loopback, where a Secure cookie would not be sent.
        )
        return response

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    @_api
    async def state(request: Request) -> Response:
        return JSONResponse(bridge.state())

    @_api
    async def register(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(
            await bridge.register(str(body["username"]), str(body["email"]), str(body["password"]))
        )

    @_api
    async def login(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(await bridge.login(str(body["username"]), str(body["password"])))

    @_api
    async def logout(request: Request) -> Response:
        await bridge.logout()
        return JSONResponse(bridge.state())

    @_api
    async def settings_get(request: Request) -> Response:
        return JSONResponse(bridge.settings_view())

    @_api
    async def settings_put(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(bridge.update_settings(body.get("server_url"), body.get("ice_servers")))

    @_api
    async def contacts(request: Request) -> Response:
        return JSONResponse(await bridge.contacts())

    @_api
    async def contact_add(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(await bridge.add_contact(str(body["username"])), status_code=201)

    @_api
    async def contact_action(request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        action = request.path_params["action"]
        return JSONResponse(await bridge.contact_action(user_id, action))

    @_api
    async def contact_update(request: Request) -> Response:
        body = await _json(request)
        user_id = int(request.path_params["user_id"])
        if request.method == "DELETE":
            await bridge.contact_action(user_id, "remove")
            return JSONResponse({"removed": user_id})
        return JSONResponse(await bridge.update_contact(user_id, body.get("group"), body.get("remark")))

    @_api
    async def search(request: Request) -> Response:
        return JSONResponse(await bridge.search(request.query_params.get("q", "")))

    @_api
    async def messages(request: Request) -> Response:
        to = _conversation(request)
        if request.method == "POST":
            body = await _json(request)
            return JSONResponse(await bridge.send_text(to, str(body["text"])), status_code=201)
        return JSONResponse(await bridge.history(to))

    @_api
    async def typing(request: Request) -> Response:
        body = await _json(request)
        await bridge.typing(_conversation(request), bool(body.get("active", True)))
        return JSONResponse({"ok": True})

    @_api
    async def read(request: Request) -> Response:
        body = await _json(request)
        ids = [str(m) for m in body["message_ids"]]
        return JSONResponse(await bridge.mark_read(_conversation(request), ids))

    @_api
    async def file_upload(request: Request) -> Response:
        to = _conversation(request)
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UiError("Choose a file to send.", code="no_file")
        upload_id = form.get("upload_id")
        try:
            sent = await bridge.send_file(to, upload, upload_id if isinstance(upload_id, str) else None)
            return JSONResponse(sent, status_code=201)
        finally:
            await form.close()

    @_api
    async def reconnect(request: Request) -> Response:
        return JSONResponse(await bridge.reconnect())

    @_api
    async def file_download(request: Request) -> Response:
        path, name = await bridge.received_file(str(request.path_params["message_id"]))
        return FileResponse(path, filename=name, content_disposition_type="attachment")

    @_api
    async def safety(request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        if request.method == "POST":
            return JSONResponse(await bridge.mark_verified(user_id))
        return JSONResponse(await bridge.safety(user_id))

    @_api
    async def stego_hide(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=4)
        try:
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise UiError("Choose a PNG or BMP image to hide the message in.", code="no_image")
            png = await bridge.stego_hide(
                await image.read(), str(form.get("message", "")), str(form.get("passphrase", ""))
            )
        finally:
            await form.close()
        return Response(
            png,
            media_type="image/png",
            headers={"Content-Disposition": 'attachment; filename="hidden.png"'},
        )

    @_api
    async def stego_reveal(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=4)
        try:
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise UiError("Choose the image that holds the message.", code="no_image")
            text = await bridge.stego_reveal(await image.read(), str(form.get("passphrase", "")))
        finally:
            await form.close()
        return JSONResponse({"message": text})

    @_api
    async def stego_capacity(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=2)
        try:
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise UiError("Choose an image.", code="no_image")
            return JSONResponse({"capacity": await bridge.stego_capacity(await image.read())})
        finally:
            await form.close()

    async def events(websocket: WebSocket) -> None:
        await websocket.accept()
        with bridge.events.subscribe() as queue:
            try:
                await websocket.send_json({"type": "state", "state": bridge.state()})
            except (WebSocketDisconnect, RuntimeError):
                return
            # Two owned tasks: one forwards events, one reads (how a closed tab is noticed). When
            # either ends, the other is cancelled; nothing outlives the socket.
            async with asyncio.TaskGroup() as group:
                tasks = {
                    group.create_task(_forward(queue, websocket)),
                    group.create_task(_until_closed(websocket)),
                }
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()

    async def _forward(queue: asyncio.Queue[dict[str, Any]], websocket: WebSocket) -> None:
        try:
            while True:
                await websocket.send_json(await queue.get())
        except (WebSocketDisconnect, RuntimeError):
            return  # the tab went away mid-send

    async def _until_closed(websocket: WebSocket) -> None:
        # The page sends nothing we act on over the socket (commands go through the API).
        try:
            while True:
                await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return

    routes = [
        Route("/", index),
        Route("/launch", launch),
        Route("/api/state", state),
        Route("/api/register", register, methods=["POST"]),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/reconnect", reconnect, methods=["POST"]),
        Route("/api/settings", settings_get, methods=["GET"]),
        Route("/api/settings", settings_put, methods=["PUT"]),
        Route("/api/contacts", contacts, methods=["GET"]),
        Route("/api/contacts", contact_add, methods=["POST"]),
        Route("/api/contacts/{user_id:int}", contact_update, methods=["PATCH", "DELETE"]),
        Route("/api/contacts/{user_id:int}/{action:str}", contact_action, methods=["POST"]),
        Route("/api/users/search", search),
        # A conversation is a contact's (by user id) or a group's (by group id): the same calls.
        *(
            Route(f"{base}/{name}", handler, methods=methods)
            for base in ("/api/conversations/{user_id:int}", "/api/groups/{group_id:str}")
            for name, handler, methods in (
                ("messages", messages, ["GET", "POST"]),
                ("typing", typing, ["POST"]),
                ("read", read, ["POST"]),
                ("files", file_upload, ["POST"]),
            )
        ),
        Route("/api/files/{message_id:str}", file_download),
        Route("/api/safety/{user_id:int}", safety, methods=["GET", "POST"]),
        Route("/api/stego/hide", stego_hide, methods=["POST"]),
        Route("/api/stego/reveal", stego_reveal, methods=["POST"]),
        Route("/api/stego/capacity", stego_capacity, methods=["POST"]),
        *daily.routes(bridge),  # issue 15: block, devices, account, edit/delete, unverify
        *groups.routes(bridge),  # issue 13: create, members, rename, leave
        WebSocketRoute("/api/events", events),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "There is no such page in PeerPost.", "code": "not_found"}, 404)
        return error_page(404, "Not found", "There is no such page in PeerPost.")

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    return GuardMiddleware(app, policy, gate)


_PAGE_HEADERS = {
    # Everything is served from here; no inline script, no framing by other sites.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
