"""The one place that knows both the page's needs and the Peer's API.

The UI server's routes call `PeerBridge`; the bridge drives one `Peer` (started at login, closed at
logout) and translates its events into the small JSON events the page understands. Errors from the
peer (`PeerError`) and from crypto (`CryptoError`) become `UiError` with a sentence for a person.

The bridge holds no keys and writes no history itself: the peer owns both. It does own the UI's
settings file (server URL, ICE servers) and `sent-files/` in the profile: the copies of files the
browser uploads, kept because an interrupted direct transfer resumes from its source file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from starlette.datastructures import UploadFile

from crypto import stego
from crypto.errors import CryptoError, StegoError
from peer.atomicfile import write_atomic
from peer.errors import AuthFailed, KeyChanged, PeerError, ServerError, ServerUnavailable, WrongPassword
from peer.events import (
    ConnectionChanged,
    ContactChanged,
    ErrorEvent,
    Event,
    EventHandlers,
    FileProgress,
    FileReceived,
    KeygenProgress,
    KeyWarning,
    LinkChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    PresenceSnapshot,
    ReadMarked,
    ReceiptReceived,
    SignalRejectedEvent,
    TypingChanged,
)
from peer.ui.events import EventHub
from peer.vocab import ConversationId, KeyChange

if TYPE_CHECKING:
    from peer import Peer
    from peer.profile import Profile

log = logging.getLogger(__name__)

# The peer's view types (`Me`, `MessageView`) are read by attribute, as docs/peer.md lists them.
Me = Any
MessageView = Any
StartAction = Callable[["Peer"], Awaitable[Me]]
Conversation = int | str  # a contact's user id, or "g:<group id>"

Phase = Literal["logged_out", "keygen", "ready"]
MAX_STEGO_IMAGE_BYTES = 32 * 1024 * 1024
LOGIN_DEADLINE_S = 120.0
RETRY_WAIT_S = 3.0


class UiError(Exception):
    """A failure the page shows as it is: `message` is a sentence for the person at the screen."""

    def __init__(self, message: str, status: int = 400, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass
class UiSettings:
    """What the settings screen edits; saved beside the profile so the next start uses it."""

    server_url: str
    ice_servers: list[str] | None = None  # None: use the servers the PeerPost server hands out
    host_addresses: list[str] | None = None
    path: Path | None = None

    @classmethod
    def load(cls, path: Path, server_url: str, ice_servers: list[str] | None = None) -> UiSettings:
        settings = cls(server_url=server_url, ice_servers=ice_servers, path=path)
        try:
            saved = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return settings
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable UI settings %s: %s", path, err)
            return settings
        settings.server_url = str(saved.get("server_url") or server_url)
        saved_ice = saved.get("ice_servers")
        settings.ice_servers = [str(u) for u in saved_ice] if saved_ice else ice_servers
        return settings

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"server_url": self.server_url, "ice_servers": self.ice_servers})
        write_atomic(self.path, data.encode("utf-8"))


def check_server_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UiError("Enter the server URL, for example http://127.0.0.1:8000.", code="bad_settings")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UiError(f"“{value}” is not a server URL; it should look like https://chat.example.org.")
    return url


def check_ice_servers(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise UiError("ICE servers must be a list of URLs.", code="bad_settings")
    urls = [u.strip() for u in value if u.strip()]
    for url in urls:
        if not url.startswith(("stun:", "turn:", "turns:")):
            raise UiError(f"“{url}” is not a STUN or TURN URL (it should start with stun: or turn:).")
    return urls


def _sentence(text: str) -> str:
    """Library messages start lower-case and end bare; the page shows sentences."""
    text = text.strip()
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


_UNSAFE_NAME = re.compile(r"[^\w .()+,-]")


def _safe_name(name: str) -> str:
    """A file name without directories or control characters, as the receiver will see it."""
    name = _UNSAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).strip(" .")
    return name[:200] or "file"


def _ui_error(err: BaseException) -> UiError:
    if isinstance(err, UiError):
        return err
    if isinstance(err, (AuthFailed, WrongPassword)):
        return UiError(_sentence(str(err)) if str(err) else "Wrong username or password.", 401, "auth")
    if isinstance(err, ServerUnavailable):
        return UiError(_sentence(str(err)), 503, "server_unavailable")
    if isinstance(err, KeyChanged):
        return UiError(_sentence(str(err)), 409, "key_changed")
    if isinstance(err, ServerError):
        status = err.status if err.status and 400 <= err.status < 500 else 502
        return UiError(_sentence(str(err)), status, err.code or "server")
    if isinstance(err, (PeerError, CryptoError)):
        return UiError(_sentence(str(err)), 400, type(err).__name__)
    if isinstance(err, asyncio.CancelledError):
        return UiError("The request was cancelled.", 503, "cancelled")
    log.error("unexpected error in the UI bridge", exc_info=err)
    return UiError("Something went wrong inside PeerPost; its log has the details.", 500, "internal")


def conversation_keys(conversation: ConversationId) -> dict[str, Any]:
    """How the page's events name a conversation: `user_id` for a contact, `group_id` for a group."""
    user_id = conversation.user_id
    return {"user_id": user_id} if user_id is not None else {"group_id": conversation.group_id}


@contextlib.asynccontextmanager
async def _errors() -> AsyncIterator[None]:
    """Peer and crypto errors become UiError, with the library's sentence."""
    try:
        yield
    except (PeerError, CryptoError) as err:
        raise _ui_error(err) from err


class PeerBridge:
    """Drives one Peer for the page: started at login, closed at logout or shutdown.

    It owns no client state of its own: trust and key warnings are read from the peer's keyring,
    presence from the peer's `Presence`, unread counts and last messages from its local store.
    What it keeps is only for wording (usernames) and for routing progress events to a window.
    """

    def __init__(self, settings: UiSettings, profile: Profile, events: EventHub | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.events = events or EventHub()
        self.phase: Phase = "logged_out"
        self._peer: Peer | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._pump: asyncio.Task[None] | None = None
        self._server_lost = False  # the peer lost the server since login: re-read lists when back
        self._me: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._usernames: dict[int, str] = {}
        self._file_owner: dict[str, dict[str, Any]] = {}  # message id -> its conversation's keys
        # Set by the resident node: it owns the peer this bridge drives, and hears of a logout.
        self._adopted = False
        self.on_logout: Callable[[], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ state and settings

    def state(self) -> dict[str, Any]:
        peer = self._peer
        return {
            "phase": self.phase,
            "me": self._me,
            "online": bool(peer is not None and peer.online),
            "offline_reason": peer.offline_reason if peer is not None and self.phase == "ready" else None,
            "known_username": self._known_username(),
            "settings": self.settings_view(),
        }

    def _known_username(self) -> str | None:
        """Who last logged in with this profile, so the login form can be filled in for them."""
        try:
            meta = self.profile.load_meta()
        except PeerError:
            return None
        return meta.username if meta is not None else None

    def settings_view(self) -> dict[str, Any]:
        return {
            "server_url": self.settings.server_url,
            "ice_servers": list(self.settings.ice_servers or []),
            "profile": self.profile.name,
            "data_dir": str(self.profile.path),
            "device_id": (self._me or {}).get("device_id"),
        }

    def update_settings(self, server_url: Any, ice_servers: Any) -> dict[str, Any]:
        url = check_server_url(server_url)
        ice = check_ice_servers(ice_servers)
        if self.phase != "logged_out" and url != self.settings.server_url:
            raise UiError("Log out before switching to another server.", status=409, code="logged_in")
        self.settings.server_url = url
        # An empty list on the settings screen means "use what the server hands out".
        self.settings.ice_servers = ice or None
        try:
            self.settings.save()
        except OSError as err:
            raise UiError(f"The settings could not be saved: {err.strerror}.", status=500) from err
        return self.settings_view()

    def _publish_state(self) -> None:
        self.events.publish({"type": "state", "state": self.state()})

    # ------------------------------------------------------------------ session

    async def register(self, username: str, email: str, password: str) -> dict[str, Any]:
        """Create the account and log in (the first login makes this device's keys)."""
        return await self._start_peer(lambda peer: peer.register(username, email, password))

    async def login(self, username: str, password: str) -> dict[str, Any]:
        if not username or not password:
            raise UiError("Enter your username and password.", code="missing")
        return await self._start_peer(lambda peer: peer.login(username, password))

    async def _start_peer(self, action: StartAction) -> dict[str, Any]:
        async with self._lock:
            if self.phase == "ready":
                raise UiError("You are already logged in.", status=409, code="logged_in")
            stack = contextlib.AsyncExitStack()
            try:
                peer = await stack.enter_async_context(self._make_peer())
                # Listen before logging in: key-generation progress arrives as events.
                queue = peer.subscribe()
                self._pump = asyncio.create_task(self._pump_events(peer, queue), name="peerpost-ui-events")
                me = await asyncio.wait_for(action(peer), LOGIN_DEADLINE_S)
            except BaseException as err:
                await self._cancel_pump()
                await stack.aclose()
                self.phase = "logged_out"
                self._publish_state()
                if isinstance(err, TimeoutError):
                    raise UiError("Logging in took too long; try again.", status=504) from err
                raise _ui_error(err) from err
            self._peer, self._stack = peer, stack
            self._me = {"user_id": me.user_id, "username": me.username, "device_id": me.device_id}
            self._usernames[me.user_id] = me.username
            self.phase = "ready"
            self._publish_state()
            return self.state()

    @property
    def peer(self) -> Peer | None:
        """The peer the page drives, once logged in (the resident node serves its calls with it)."""
        return self._peer if self.phase == "ready" else None

    def adopt(self, peer: Peer) -> None:
        """Drive a running peer that the resident node owns: ready at once, never closed here."""
        me = peer.me
        self._peer, self._stack, self._adopted = peer, None, True
        self._me = {"user_id": me.user_id, "username": me.username, "device_id": me.device_id}
        self._usernames[me.user_id] = me.username
        self.phase = "ready"
        self._pump = asyncio.create_task(self._pump_events(peer, peer.subscribe()), name="peerpost-ui-events")
        self._publish_state()

    def _make_peer(self) -> Peer:
        # Imported here: the UI server (and its tests) start without loading aiortc.
        from aiortc import RTCIceServer

        from peer import Peer, PeerSettings

        ice = self.settings.ice_servers
        settings = PeerSettings(
            ice_servers=None if ice is None else tuple(RTCIceServer(urls=url) for url in ice),
            host_addresses=tuple(self.settings.host_addresses) if self.settings.host_addresses else None,
        )
        return Peer(self.profile, self.settings.server_url, settings=settings)

    def _on_keygen(self, fraction: float, label: str) -> None:
        if self.phase == "logged_out":
            self.phase = "keygen"
            self._publish_state()
        self.events.publish({"type": "keygen", "fraction": fraction, "label": label})

    async def logout(self) -> None:
        async with self._lock:
            peer = self._peer
            if peer is not None:
                try:
                    await peer.logout()
                except PeerError as err:
                    log.warning("logout: %s", err)
            adopted, self._adopted = self._adopted, False
            await self._stop_peer()
            self._publish_state()
        if adopted and self.on_logout is not None:
            await self.on_logout()

    async def close(self) -> None:
        """Shut the peer down (the UI server is stopping); keeps the session for the next start."""
        async with self._lock:
            self._adopted = False
            await self._stop_peer()
            self._publish_state()

    async def reconnect(self) -> dict[str, Any]:
        """The page's "Retry now": the peer tries the server at once instead of waiting out its
        back-off; the answer comes when it is back, or after a short wait with why it is not."""
        peer = self._require_peer()
        peer.reconnect_now()
        await peer.wait_online(RETRY_WAIT_S)
        return self.state()

    async def _cancel_pump(self) -> None:
        task, self._pump = self._pump, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stop_peer(self) -> None:
        await self._cancel_pump()
        if self._stack is not None:
            await self._stack.aclose()
        self._peer = self._stack = None
        self._me = None
        self._file_owner.clear()
        self._server_lost = False
        self.phase = "logged_out"

    def _require_peer(self) -> Peer:
        if self._peer is None or self.phase != "ready":
            raise UiError("Log in first.", status=401, code="not_logged_in")
        return self._peer

    # ------------------------------------------------------------------ contacts

    async def contacts(self) -> dict[str, Any]:
        """The contact list with each person's last message and unread count, most recent first."""
        peer = self._require_peer()
        async with _errors():
            book = await peer.contact_book()
            summaries = {s.conversation.user_id: s for s in await peer.conversation_summaries()}
            verified = {c.user_id: await peer.is_verified(c.user_id) for c in book.accepted}
        for c in [*book.accepted, *book.incoming, *book.outgoing]:
            self._usernames[c.user_id] = c.username
        rows = []
        for c in book.accepted:
            summary = summaries.get(c.user_id)
            warning = self._warning(peer, c.user_id)
            rows.append(
                {
                    "user_id": c.user_id,
                    "username": c.username,
                    "display_name": c.display_name,
                    "online": peer.is_online(c.user_id),
                    "group": c.group,
                    "remark": c.remark,
                    "verified": verified[c.user_id] and warning is None,
                    "key_warning": warning["change"] if warning else None,
                    "unread": summary.unread if summary else 0,
                    "last": self._preview(summary.last) if summary and summary.last else None,
                    "last_at_ms": summary.last_at_ms if summary else 0,
                }
            )
        rows.sort(key=lambda r: (-cast(int, r["last_at_ms"]), cast(str, r["username"]).lower()))
        return {
            "contacts": rows,
            "incoming": [{"user_id": c.user_id, "username": c.username} for c in book.incoming],
            "outgoing": [{"user_id": c.user_id, "username": c.username} for c in book.outgoing],
            "cached": book.cached,
        }

    def _preview(self, view: MessageView) -> dict[str, Any]:
        """The contact list's one line about a message (in a group, who wrote it)."""
        if view.kind == "file":
            text = f"File: {(view.file or {}).get('name', 'file')}"  # no emoji: fonts may lack it
        else:
            text = " ".join((view.text or "").split())[:120]
        if view.conversation.user_id is None and not view.outgoing and view.kind != "group_event":
            text = f"{self._usernames.get(view.sender_user, f'user {view.sender_user}')}: {text}"
        return {"text": text, "direction": "out" if view.outgoing else "in", "sent_at_ms": view.sent_at_ms}

    async def search(self, query: str) -> list[dict[str, Any]]:
        peer = self._require_peer()
        query = query.strip()
        if not query:
            return []
        async with _errors():
            users = await peer.search(query)
        return [{"id": u.id, "username": u.username} for u in users]

    async def add_contact(self, username: str) -> dict[str, Any]:
        peer = self._require_peer()
        async with _errors():
            contact = await peer.add_contact(username.strip())
        return {"user_id": contact.user_id, "username": contact.username}

    async def contact_action(self, user_id: int, action: str) -> dict[str, Any]:
        peer = self._require_peer()
        calls = {
            "accept": peer.accept_contact,
            "decline": peer.decline_contact,
            "remove": peer.remove_contact,
        }
        if action not in calls:
            raise UiError(f"Unknown contact action “{action}”.", status=404, code="not_found")
        async with _errors():
            await calls[action](user_id)
        self.events.publish({"type": "contacts_changed"})
        return {"user_id": user_id, "done": action}

    async def update_contact(self, user_id: int, group: Any, remark: Any) -> dict[str, Any]:
        peer = self._require_peer()
        for name, value in (("group", group), ("remark", remark)):
            if value is not None and not isinstance(value, str):
                raise UiError(f"The {name} must be text.", code="bad_request")
        if group is not None and len(group) > 64:
            raise UiError("A group name can be at most 64 characters.")
        if remark is not None and len(remark) > 256:
            raise UiError("A remark can be at most 256 characters.")
        async with _errors():
            contact = await peer.set_contact(user_id, group=group or None, remark=remark or None)
        return {"user_id": contact.user_id, "group": contact.group, "remark": contact.remark}

    # ------------------------------------------------------------------ messages and files

    async def history(self, to: Conversation) -> dict[str, Any]:
        peer = self._require_peer()
        async with _errors():
            views = await peer.history(to, limit=200)
            await self._learn_senders(peer, to, views)
        warning = self._warning(peer, to) if isinstance(to, int) else None
        return {
            "messages": [self._message_json(v) for v in views],
            "key_warning": warning["text"] if warning else None,
            "key_change": warning["change"] if warning else None,
        }

    async def send_text(self, to: Conversation, text: str) -> dict[str, Any]:
        peer = self._require_peer()
        if not text.strip():
            raise UiError("Write something first.", code="empty")
        async with _errors():
            view = await peer.send_text(to, text)
        return self._message_json(view)

    async def send_file(
        self, to: Conversation, upload: UploadFile, upload_id: str | None = None
    ) -> dict[str, Any]:
        """Copy the browser's upload into the profile and send it; the page follows the transfer
        through an `upload` event (its `upload_id` → the message id) and `file_progress` events."""
        peer = self._require_peer()
        name = _safe_name(upload.filename or "file")
        # Sent files stay in the profile: a transfer interrupted by a reconnect resumes from them.
        folder = self.profile.path / "sent-files" / secrets.token_hex(8)
        await asyncio.to_thread(folder.mkdir, parents=True, mode=0o700)
        target = folder / name

        def copy() -> None:
            with target.open("wb") as out:
                shutil.copyfileobj(upload.file, out, 1 << 20)

        await asyncio.to_thread(copy)
        message_id = peer.new_message_id()
        where = conversation_keys(ConversationId.of(to))
        self._file_owner[message_id] = where
        if upload_id:
            self.events.publish(
                {"type": "upload", "upload_id": upload_id[:64], "message_id": message_id, **where}
            )
        async with _errors():
            view = await peer.send_file(to, target, message_id=message_id)
        return self._message_json(view)

    async def received_file(self, message_id: str) -> tuple[Path, str]:
        peer = self._require_peer()
        async with _errors():
            view = await peer.message(message_id)
        file = (view.file if view is not None else None) or {}
        path = file.get("path")
        if not path or not await asyncio.to_thread(Path(path).is_file):
            raise UiError("That file is not here (yet): it may still be arriving.", status=404)
        return Path(path), str(file.get("name") or Path(path).name)

    async def typing(self, to: Conversation, active: bool) -> None:
        peer = self._require_peer()
        with contextlib.suppress(PeerError):  # best effort by design
            await peer.send_typing(to, active)

    async def mark_read(self, to: Conversation, message_ids: list[str]) -> dict[str, Any]:
        """Mark read here (the peer receipts only what changed, and a file only once it arrived)."""
        peer = self._require_peer()
        try:
            marked = await peer.mark_read(to, message_ids)
        except KeyChanged as err:
            # Read receipts are a courtesy: while a key change waits for confirmation they are not
            # sent (the local mark stands), and the conversation already shows the warning.
            log.info("read receipt to %s held back: %s", to, err)
            marked = []
        except (PeerError, CryptoError) as err:
            raise _ui_error(err) from err
        async with _errors():
            unread = await peer.unread(to)
        return {"read": marked, "unread": unread}

    def _message_json(self, view: MessageView) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": view.message_id,
            "direction": "out" if view.outgoing else "in",
            "kind": view.kind,
            "text": view.text,
            "sent_at_ms": view.sent_at_ms,
            "path": view.path,
            "state": view.state,
            "reason": view.reason,
            "unread": view.unread,
            "edited": view.edited_at_ms is not None,
            "editable": view.outgoing and view.kind == "text",
        }
        if view.file is not None:
            data["file"] = {
                "name": view.file.get("name", "file"),
                "size": view.file.get("size", 0),
                "downloadable": bool(view.file.get("path")),
                "arrived": view.outgoing or view.file.get("state") == "done",
            }
        if view.conversation.user_id is None:  # a group: who wrote it, and how far it got
            data["sender_user"] = view.sender_user
            data["sender"] = self._usernames.get(view.sender_user, f"user {view.sender_user}")
            recipients = getattr(view, "recipients", None)
            if view.outgoing and recipients:
                data["rollup"] = {
                    "recipients": recipients,
                    "delivered": getattr(view, "delivered", 0),
                    "read": getattr(view, "read", 0),
                }
        return data

    async def _learn_senders(self, peer: Peer, to: Conversation, views: list[MessageView]) -> None:
        """Group members need not be this user's contacts: their names come from the member list,
        read again only when a sender is not known yet."""
        group_id = ConversationId.of(to).group_id
        if group_id is None or (views and all(v.sender_user in self._usernames for v in views)):
            return
        for member in await peer.group_members(group_id):
            self._usernames[member.user_id] = member.username

    # ------------------------------------------------------------------ safety numbers and key changes

    def _warning(self, peer: Peer, user_id: int) -> dict[str, Any] | None:
        """The keyring's unsettled warnings about this contact, worded for the page."""
        warnings = peer.key_warnings(user_id)
        if not warnings:
            return None
        who = self._usernames.get(user_id, f"user {user_id}")
        changed = any(w.change is KeyChange.KEY_CHANGED for w in warnings)
        if changed:
            text = f"{who}'s device key changed."
        else:
            count = len(warnings)
            text = f"{who} has a new device." if count == 1 else f"{who} has {count} new devices."
        text += " Compare the safety number again before you trust it"
        text += "; sending waits until you confirm." if any(w.blocked for w in warnings) else "."
        return {"change": KeyChange.KEY_CHANGED if changed else KeyChange.NEW_DEVICE, "text": text}

    async def safety(self, user_id: int) -> dict[str, Any]:
        peer = self._require_peer()
        async with _errors():
            number = await peer.safety_number(user_id)
        groups = number.formatted.split()
        return {
            "user_id": user_id,
            "username": self._usernames.get(user_id, f"user {user_id}"),
            "digits": number.digits,
            "formatted": "\n".join(" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4)),
            "qr_svg": number.qr_svg,
            "verified": number.verified and not peer.key_warnings(user_id),
        }

    async def mark_verified(self, user_id: int) -> dict[str, Any]:
        peer = self._require_peer()
        async with _errors():
            if peer.key_warnings(user_id):
                await peer.accept_key_change(user_id)
            await peer.verify_contact(user_id)
        self.events.publish({"type": "contacts_changed"})
        return await self.safety(user_id)

    # ------------------------------------------------------------------ live events

    async def _pump_events(self, peer: Peer, queue: asyncio.Queue[Event | None]) -> None:
        """Translate the peer's events into the page's, by event class; one bad event never stops
        the stream (`EventHandlers` logs it and goes on)."""
        try:
            await self._handlers(peer).pump(queue)
        finally:
            peer.unsubscribe(queue)

    def _handlers(self, peer: Peer) -> EventHandlers:
        async def message(ev: MessageReceived) -> None:
            await self._publish_message(peer, ev.message.message_id)

        async def by_id(ev: MessageStateChanged | FileReceived) -> None:
            await self._publish_message(peer, ev.message_id)

        async def receipt(ev: ReceiptReceived) -> None:
            for message_id in ev.message_ids:
                await self._publish_message(peer, message_id)

        handlers = (
            EventHandlers()
            .on(PresenceChanged, self._on_presence)
            .on(PresenceSnapshot, self._on_presence_snapshot)
            .on(ConnectionChanged, self._on_connection)
            .on(ContactChanged, self._on_contact)
            .on(MessageReceived, message)
            .on(MessageStateChanged, by_id)
            .on(FileReceived, by_id)
            .on(ReceiptReceived, receipt)
            .on(ReadMarked, self._on_read)
            .on(TypingChanged, self._on_typing)
            .on(FileProgress, lambda ev: self._file_progress(peer, ev))
            .on(KeyWarning, lambda ev: self._key_warning(peer, ev))
            .on(SignalRejectedEvent, self._on_signal_rejected)
            .on(LinkChanged, self._on_link)
            .on(KeygenProgress, lambda ev: self._on_keygen(ev.fraction, ev.label))
            .on(
                ErrorEvent,
                lambda ev: self.events.publish({"type": "error", "message": _sentence(ev.message)}),
            )
        )
        from peer.ui import daily, groups  # issue 15: edits, deletions, removed devices; 13: groups

        return groups.page_events(self, daily.page_events(self, peer, handlers))

    def _on_presence(self, ev: PresenceChanged) -> None:
        # Presence changes the one contact's dot in the page; nothing is re-read from the server.
        peer = self._peer
        online = peer.is_online(ev.user_id) if peer is not None else ev.online
        self.events.publish({"type": "presence", "user_id": ev.user_id, "online": online})

    def _on_presence_snapshot(self, ev: PresenceSnapshot) -> None:
        self.events.publish({"type": "presence_snapshot", "online": list(ev.online_users)})

    def _on_connection(self, ev: ConnectionChanged) -> None:
        self.events.publish({"type": "connection", "online": ev.online, "reason": ev.reason})
        if not ev.online:
            self._server_lost = True
        elif self._server_lost:
            # Contact changes made while the peer was away were not pushed: read the lists again
            # (not on the first connect after login: the page reads them when it turns ready).
            self._server_lost = False
            self.events.publish({"type": "contacts_changed"})

    def _on_contact(self, ev: ContactChanged) -> None:
        # Pushed by the server (a request, an answer, a removal, a label from another device).
        self._usernames[ev.user_id] = ev.username
        self.events.publish({"type": "contacts_changed"})

    def _on_read(self, ev: ReadMarked) -> None:
        where = conversation_keys(ConversationId(ev.conversation))
        self.events.publish({"type": "unread", **where, "unread": ev.unread, "read": list(ev.message_ids)})

    def _on_typing(self, ev: TypingChanged) -> None:
        where = conversation_keys(ConversationId(ev.conversation))
        who = {"user_id": ev.user_id, "name": self._usernames.get(ev.user_id, f"user {ev.user_id}")}
        self.events.publish({"type": "typing", **where, **who, "active": ev.active})

    def _on_signal_rejected(self, ev: SignalRejectedEvent) -> None:
        who = self._usernames.get(ev.user_id, f"user {ev.user_id}")
        self.events.publish(
            {
                "type": "error",
                "message": f"A connection offer from {who}'s device failed its signature check "
                "and was refused.",
            }
        )

    def _on_link(self, ev: LinkChanged) -> None:
        self.events.publish({"type": "link", "user_id": ev.user_id, "state": ev.state})

    async def _publish_message(self, peer: Peer, message_id: str) -> dict[str, Any] | None:
        """Tell the page about a message, new or changed; returns its conversation's keys."""
        view = await peer.message(message_id)
        if view is None:
            return None
        conversation = view.conversation
        await self._learn_senders(peer, conversation, [view])
        summary = {
            "unread": await peer.unread(conversation),
            "last": self._preview(view),
            "last_at_ms": view.sent_at_ms,
        }
        where = conversation_keys(conversation)
        self.events.publish(
            {"type": "message", **where, "message": self._message_json(view), "summary": summary}
        )
        return where

    async def _file_progress(self, peer: Peer, ev: FileProgress) -> None:
        message_id = ev.message_id
        where = self._file_owner.get(message_id)
        if where is None:
            where = await self._publish_message(peer, message_id)
            if where is None:
                return
            self._file_owner[message_id] = where
        fraction = 1.0 if not ev.total else min(1.0, ev.done / ev.total)
        self.events.publish(
            {
                "type": "file_progress",
                **where,
                "message_id": message_id,
                "fraction": fraction,
                "outgoing": ev.outgoing,
                "via": ev.via,
            }
        )

    def _key_warning(self, peer: Peer, ev: KeyWarning) -> None:
        warning = self._warning(peer, ev.user_id)
        if warning is None:
            return
        self.events.publish(
            {
                "type": "key_change",
                "user_id": ev.user_id,
                "text": warning["text"],
                "change": warning["change"],
            }
        )
        self.events.publish({"type": "contacts_changed"})

    # ------------------------------------------------------------------ steganography (no peer needed)

    async def stego_capacity(self, image: bytes) -> int:
        self._check_image(image)
        return await asyncio.to_thread(self._stego_call, stego.capacity, image)

    async def stego_hide(self, image: bytes, message: str, passphrase: str) -> bytes:
        self._check_image(image)
        if not message:
            raise UiError("Write the message to hide.", code="no_message")
        secret = message.encode("utf-8")
        if passphrase:
            return await asyncio.to_thread(
                self._stego_call, stego.hide_with_passphrase, image, secret, passphrase
            )
        return await asyncio.to_thread(self._stego_call, stego.embed, image, secret)

    async def stego_reveal(self, image: bytes, passphrase: str) -> str:
        self._check_image(image)
        hidden = await asyncio.to_thread(self._stego_call, stego.extract_hidden, image)
        if hidden.kind == stego.KIND_PASSPHRASE:
            if not passphrase:
                raise UiError("This message is locked with a passphrase; enter it to read the message.")
            data = await asyncio.to_thread(
                self._stego_call, stego.open_with_passphrase, hidden.data, passphrase
            )
        elif hidden.kind == stego.KIND_RAW:
            data = hidden.data
        else:
            raise UiError("This image hides an encrypted PeerPost envelope, not a plain message.")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UiError("The image hides data that is not text.", code="not_text") from None

    @staticmethod
    def _check_image(image: bytes) -> None:
        if not image:
            raise UiError("The chosen image is empty.", code="no_image")
        if len(image) > MAX_STEGO_IMAGE_BYTES:
            raise UiError(
                f"Images up to {MAX_STEGO_IMAGE_BYTES // (1024 * 1024)} MB can be used.", status=413
            )

    @staticmethod
    def _stego_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StegoError as err:
            raise UiError(_sentence(str(err)), code=type(err).__name__) from err
