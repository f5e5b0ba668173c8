"""`Peer`: one running PeerPost device — the object the CLI and the web UI drive.

`async with Peer(profile, server_url) as p:` owns everything it starts: the REST client, the hub
session (WebSocket with reconnects), the direct links, the local store, the inbox task that
processes what arrives, and every helper task (receipts, outbox flushes, blob downloads). Leaving
the block closes all of them; no task, socket or RTCPeerConnection survives it.

The work itself lives in parts the Peer builds at start-up and hands what they need:
`peer.inbox` receives (whichever way an envelope came), `peer.outbox` sends (seal once for every
device, `peer.router` picks the path per device), `peer.history` reads stored messages back as
views. The Peer keeps the lifetime, the login, presence and contacts, and the public API; the
plain data it hands out lives in `peer.views` and is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import platformdirs
from aiortc import RTCIceServer

from crypto.atrest import open_at_rest, seal_at_rest
from crypto.bundle import make_bundle
from crypto.envelope import LocalDevice
from crypto.errors import (
    AtRestError,
    KeystoreCorrupt,
    KeystoreLocked,
)
from crypto.filestream import FileManifest
from crypto.keys import generate_device_keys
from crypto.keystore import (
    Keystore,
    change_keystore_password,
    create_keystore,
    load_keystore,
)
from crypto.safety import format_safety_number, safety_number, safety_qr_svg, safety_qr_text
from crypto.sessionkeys import SessionKeyCache, UnwrapCache
from peer import frames
from peer.client import ServerClient, normalise_server_url
from peer.errors import (
    AuthFailed,
    ConfigError,
    NotLoggedIn,
    PeerError,
    ServerError,
    UnknownContact,
    WrongPassword,
)
from peer.events import (
    ConnectionChanged,
    ContactChanged,
    ErrorEvent,
    Event,
    EventBus,
    KeygenProgress,
    KeyWarning,
    LinkChanged,
    PresenceChanged,
    SignalRejectedEvent,
)
from peer.history import History
from peer.inbox import Inbox
from peer.keyring import Keyring
from peer.link import Link, LinkSettings, LinkState
from peer.linkset import LinkSet
from peer.localstore import LocalStore
from peer.outbox import Outbox
from peer.profile import Profile, ProfileMeta, write_private
from peer.router import QUEUED, RELAYED, RoutePolicy, Router
from peer.session import Backoff, HubSession
from peer.transfer import FileTransfers, export_sealed
from peer.views import (
    DeviceInfo,
    Me,
    MessageView,
    PeerSettings,
    SafetyNumber,
    conversation_of,
)
from signalling.protocol import (
    ContactEvent,
    ContactFrame,
    ContactOut,
    ContactStatus,
    ContactUpdate,
    DeliverFrame,
    DeviceBundleIn,
    ErrorCode,
    ErrorFrame,
    PresenceFrame,
    ReadyFrame,
    ServerFrame,
    SignalFrame,
    TokenPair,
    UserPublic,
    UserUpdate,
    b64encode,
)

log = logging.getLogger(__name__)


class Peer:
    def __init__(
        self, profile: Profile, server_url: str | None = None, *, settings: PeerSettings | None = None
    ) -> None:
        self.profile = profile
        self.settings = settings or PeerSettings()
        meta = profile.load_meta()
        url = server_url or (meta.server_url if meta else None)
        if not url:
            raise ConfigError("no server given: pass --server URL (or set PEERPOST_SERVER)")
        self.server_url = normalise_server_url(url)
        self._bus = EventBus()
        self._client = ServerClient(self.server_url, on_tokens=self._save_tokens)
        self._keystore: Keystore | None = None
        self._me: Me | None = None
        self._store: LocalStore | None = None
        self._keyring: Keyring | None = None
        self._links: LinkSet | None = None
        self._router: Router | None = None
        self._session: HubSession | None = None
        self._transfers: FileTransfers | None = None
        self._history: History | None = None
        self._outbox: Outbox | None = None
        self._inbox: Inbox | None = None
        # Envelope v2 session keys, in memory for this peer's lifetime only (never on disk): the
        # sender reuses one RSA-wrapped key per remote device, the receiver skips RSA for known ones.
        self._session_keys = SessionKeyCache()
        self._unwrap_cache = UnwrapCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offline_users: set[int] = set()
        self._device_presence: dict[str, bool] = {}
        self._contact_news = asyncio.Lock()  # FIFO: contact events keep the order the server sent
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------------------------------------
    # lifetime
    # ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        # Receipts still on their way get a moment (a short CLI command would otherwise drop them).
        pending = [t for t in self._tasks if t.get_name() == "receipt" and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self._closed = True
        if self._session is not None:
            await self._session.close()
        if self._links is not None:
            await self._links.close()
        if self._router is not None:
            await self._router.close()
        if self._inbox is not None:
            self._inbox.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._transfers is not None:
            self._transfers.close()
        if self._store is not None:
            await self._store.close()
        self._session_keys.clear()
        self._unwrap_cache.clear()
        await self._client.aclose()
        self._bus.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: coro.close())  # cancelled before it ran: no "never awaited"
        return task

    async def _guard(self, coro: Awaitable[Any], name: str) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except PeerError as e:
            self._publish(ErrorEvent(f"{name}: {e}"))
        except Exception as e:  # a background job must never die silently
            log.exception("%s failed", name)
            self._publish(ErrorEvent(f"{name} failed: {e}"))
        return None

    def _publish(self, event: Event) -> None:
        self._bus.publish(event)

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on, until the peer closes."""
        return self._bus.stream()

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A queue of every event from now on (None when the peer closes); `unsubscribe` it after."""
        return self._bus.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._bus.unsubscribe(queue)

    # ---------------------------------------------------------------------------------------------
    # session
    # ---------------------------------------------------------------------------------------------

    @property
    def me(self) -> Me:
        if self._me is None:
            raise NotLoggedIn("not logged in: run `peerpost login` first")
        return self._me

    @property
    def online(self) -> bool:
        return self._session is not None and self._session.connected

    async def wait_online(self, within: float = 10.0) -> bool:
        if self._session is None:
            return False
        return await self._session.wait_connected(within)

    def _save_tokens(self, tokens: TokenPair | None) -> None:
        if self._keystore is None:
            return
        if tokens is None:
            self.profile.session_path.unlink(missing_ok=True)
            return
        sealed = seal_at_rest(self._keystore.storage_key, tokens.model_dump_json().encode(), aad=b"session")
        write_private(self.profile.session_path, sealed)

    def _progress(self, progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
        loop = asyncio.get_running_loop()

        def report(fraction: float, label: str) -> None:  # called from the keygen thread
            loop.call_soon_threadsafe(self._publish, KeygenProgress(fraction, label))
            if progress is not None:
                loop.call_soon_threadsafe(progress, fraction, label)

        return report

    async def register(
        self, username: str, email: str, password: str, progress: Callable[[float, str], None] | None = None
    ) -> Me:
        await self._client.register(username, email, password)
        return await self.login(username, password, progress)

    async def login(
        self, username: str, password: str, progress: Callable[[float, str], None] | None = None
    ) -> Me:
        """Log in; the first login on this profile makes and publishes this device's keys."""
        self._check_not_started()
        meta = self.profile.load_meta()
        await self._client.login(username, password)
        account = await self._client.me()
        if meta is not None and self.profile.keystore_path.exists():
            if meta.user_id != account.id:
                await self._client.logout()
                raise ConfigError(
                    f"profile {self.profile.name!r} belongs to {meta.username}; pick another with --profile"
                )
            self._keystore = await self._open_keystore(password)
        else:
            keys = self.settings.device_keys
            if keys is None:
                keys = await asyncio.to_thread(generate_device_keys, self._progress(progress))
            device_id = "d" + secrets.token_urlsafe(15).replace("-", "x").replace("_", "y")[:19]
            self.profile.ensure()
            info = {"user_id": account.id, "device_id": device_id, "username": account.username}
            self._keystore = await asyncio.to_thread(
                create_keystore,
                self.profile.keystore_path,
                keys,
                password,
                info,
                scrypt_n=self.settings.scrypt_n,
            )
            meta = ProfileMeta(self.server_url, account.username, account.id, device_id)
            self.profile.save_meta(meta)
        assert self._client.tokens is not None
        self._save_tokens(self._client.tokens)
        self._me = Me(account.id, account.username, meta.device_id, self.server_url)
        await self._start()
        return self._me

    async def unlock(self, password: str) -> Me:
        """Open the keystore and resume the stored session (later runs of the CLI, the UI)."""
        self._check_not_started()
        meta = self.profile.load_meta()
        if meta is None or not self.profile.keystore_path.exists():
            raise NotLoggedIn(f"profile {self.profile.name!r} has never logged in: run `peerpost login`")
        self._keystore = await self._open_keystore(password)
        try:
            sealed = await asyncio.to_thread(self.profile.session_path.read_bytes)
            tokens = TokenPair.model_validate_json(
                open_at_rest(self._keystore.storage_key, sealed, aad=b"session")
            )
        except (FileNotFoundError, AtRestError, ValueError) as e:
            raise NotLoggedIn("logged out: run `peerpost login` again") from e
        self._client.tokens = tokens
        try:
            account = await self._client.me()
        except AuthFailed as e:
            raise NotLoggedIn("the session expired: run `peerpost login` again") from e
        self._me = Me(account.id, account.username, meta.device_id, self.server_url)
        await self._start()
        return self._me

    async def _open_keystore(self, password: str) -> Keystore:
        try:
            return await asyncio.to_thread(load_keystore, self.profile.keystore_path, password)
        except KeystoreLocked as e:
            raise WrongPassword("wrong password for this profile's keystore") from e
        except KeystoreCorrupt as e:
            raise ConfigError(f"the keystore of profile {self.profile.name!r} is damaged: {e}") from e

    def _check_not_started(self) -> None:
        if self._started:
            raise PeerError("this peer is already logged in")

    async def logout(self) -> None:
        with contextlib.suppress(ServerError):
            await self._client.logout()
        self.profile.session_path.unlink(missing_ok=True)
        if self._session is not None:
            await self._session.close()

    async def change_password(self, old: str, new: str) -> None:
        await self._client.update_me(UserUpdate(password=new, current_password=old))
        await asyncio.to_thread(change_keystore_password, self.profile.keystore_path, old, new)

    async def delete_account(self) -> None:
        await self._client.delete_account()
        self.profile.session_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------
    # start-up
    # ---------------------------------------------------------------------------------------------

    @property
    def local_device(self) -> LocalDevice:
        assert self._keystore is not None
        return LocalDevice(self.me.user_id, self.me.device_id, self._keystore.keys)

    async def _start(self) -> None:
        assert self._keystore is not None and self._me is not None
        self._started = True
        self.profile.ensure()
        store = LocalStore(self.profile.db_path, self._keystore.storage_key)
        await store.open()
        self._store = store
        keyring = Keyring(
            store,
            self._client,
            self._me.user_id,
            self._me.device_id,
            self._key_warning,
            refresh_after=self.settings.key_refresh_after,
        )
        await keyring.load()
        self._keyring = keyring
        self._history = History(store, self._me.device_id)
        await self._ensure_published()

        ice = self.settings.ice_servers
        if ice is None:
            ice = await self._server_ice()
        link_settings = LinkSettings(
            ice_servers=tuple(ice),
            host_addresses=self.settings.host_addresses,
            setup_deadline=self.settings.link_deadline,
            ping_interval=self.settings.keepalive,
            dead_after=self.settings.dead_after,
        )
        self._session = HubSession(
            self._client,
            self._me.device_id,
            self._on_server_frame,
            self._on_connection,
            backoff=Backoff(self.settings.reconnect_base, self.settings.reconnect_cap),
        )
        self._links = LinkSet(
            user_id=self._me.user_id,
            device_id=self._me.device_id,
            keys=self._keystore.keys,
            settings=link_settings,
            send_signal=self._session.send_signal,
            pinned_identity=keyring.ensure_sender,
            on_frame=self._on_link_frame,  # the inbox, made below before any await
            on_link_state=self._on_link_state,
            on_rejected=lambda u, d, why: self._publish(SignalRejectedEvent(u, d, why)),
        )
        self._links.ignore_signals = not self.settings.answer_offers
        policy = RoutePolicy(
            link_deadline=self.settings.link_deadline,
            ack_deadline=self.settings.ack_deadline,
            server_deadline=self.settings.server_deadline,
            direct=self.settings.direct,
            retry_after=self.settings.link_retry_after,
        )
        self._router = Router(self._links, self._session, store, policy, self._device_online)
        self._transfers = FileTransfers(
            store,
            self._client,
            self._links,
            self.profile,
            self._publish,
            link_deadline=self.settings.link_deadline,
            stall_after=self.settings.dead_after,
            download_dir=self.download_dir if self.settings.auto_export else None,
            device_online=self._device_online,
        )
        self._outbox = Outbox(
            me=self._me,
            local_device=self.local_device,
            store=store,
            keyring=keyring,
            links=self._links,
            router=self._router,
            transfers=self._transfers,
            history=self._history,
            session_keys=self._session_keys,
            publish=self._publish,
            device_online=self._device_online,
            direct=self.settings.direct,
            link_deadline=self.settings.link_deadline,
        )
        self._inbox = Inbox(
            me=self._me,
            local_device=self.local_device,
            store=store,
            keyring=keyring,
            router=self._router,
            session=self._session,
            transfers=self._transfers,
            history=self._history,
            outbox=self._outbox,
            unwrap_cache=self._unwrap_cache,
            publish=self._publish,
            spawn=self._spawn,
            receipts=self.settings.receipts,
        )
        self._spawn(self._inbox.run(), "inbox")
        if self.settings.online:
            self._session.start()

    async def _server_ice(self) -> tuple[RTCIceServer, ...]:
        """The server's STUN/TURN list (TURN credentials expire: fetched again on every connect)."""
        config = await self._client.ice()
        return tuple(
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in config.ice_servers
        )

    async def _ensure_published(self) -> None:
        assert self._keystore is not None
        mine = await self._client.devices(self.me.user_id)
        if any(d.device_id == self.me.device_id and not d.revoked for d in mine):
            return
        keys = self._keystore.keys
        bundle = make_bundle(keys, self.me.user_id, self.me.device_id)
        await self._client.publish_device(
            DeviceBundleIn(
                device_id=bundle.device_id,
                identity_key=b64encode(bundle.identity_key),
                encryption_key=b64encode(bundle.encryption_key),
                created_at=bundle.created_at,
                signature=b64encode(bundle.signature),
            )
        )

    def _need(self) -> tuple[LocalStore, Keyring, LinkSet, Router, HubSession, FileTransfers]:
        if (
            self._store is None
            or self._keyring is None
            or self._links is None
            or self._router is None
            or self._session is None
            or self._transfers is None
        ):
            raise NotLoggedIn("not logged in: run `peerpost login` first")
        return self._store, self._keyring, self._links, self._router, self._session, self._transfers

    def _need_inbox(self) -> Inbox:
        self._need()
        assert self._inbox is not None
        return self._inbox

    def _need_outbox(self) -> Outbox:
        self._need()
        assert self._outbox is not None
        return self._outbox

    def _need_history(self) -> History:
        self._need()  # ready only once the whole start-up is done, as before
        assert self._history is not None
        return self._history

    # ---------------------------------------------------------------------------------------------
    # presence and connection
    # ---------------------------------------------------------------------------------------------

    def _device_online(self, user_id: int, device_id: str) -> bool:
        """Worth a link attempt? Optimistic unless presence said offline: the hub answers a signal
        to an unconnected device with an error at once, which ends the attempt early."""
        if device_id in self._device_presence:
            return self._device_presence[device_id]
        return user_id not in self._offline_users

    async def _on_connection(self, up: bool, reason: str | None) -> None:
        self._publish(ConnectionChanged(up, reason))
        if up:
            self._spawn(self._after_connect(), "after-connect")

    async def _after_connect(self) -> None:
        _, keyring, links, router, _, _ = self._need()
        if self.settings.ice_servers is None:
            with contextlib.suppress(ServerError):
                links.settings = replace(links.settings, ice_servers=await self._server_ice())
        with contextlib.suppress(ServerError):
            await keyring.refresh(self.me.user_id, force=True)  # own devices added meanwhile
        with contextlib.suppress(ServerError):
            await self._reload_contacts()
        for message_id, _ in await router.flush_outbox():
            await self._need_outbox().refresh_state(message_id)

    async def _reload_contacts(self) -> None:
        """The contacts cache and who is offline, from the server's list (raises ServerError)."""
        contacts = await self._client.contacts()
        self._offline_users = {
            c.user_id for c in contacts if c.status == ContactStatus.ACCEPTED and not c.online
        }
        await self._need()[0].cache_contacts([c.model_dump(mode="json") for c in contacts])

    async def _on_contact(self, frame: ContactFrame) -> None:
        """A contact change pushed by the hub: bring the cache (and keys, links) in line, then say so.

        Runs as its own task (REST calls must not hold up the hub session's reader); the lock is
        FIFO, so the events still come out in the order the server sent them.
        """
        async with self._contact_news:
            _, keyring, links, _, _, _ = self._need()
            with contextlib.suppress(ServerError):
                await self._reload_contacts()
            if frame.event is ContactEvent.ACCEPTED:
                with contextlib.suppress(ServerError):
                    await keyring.refresh(frame.user_id, force=True)  # ready to write to them now
            elif frame.event in (ContactEvent.REMOVED, ContactEvent.BLOCKED):
                # The hub no longer relays between us; a direct link would still carry their
                # messages (a blocked user's above all): drop it, and the hub refuses a new one.
                for device in keyring.devices_of(frame.user_id):
                    await links.drop(device.device_id)
            contact = frame.contact.model_dump(mode="json") if frame.contact is not None else None
            news = ContactChanged(frame.event.value, frame.user_id, frame.username, frame.by_me, contact)
            self._publish(news)

    def _on_link_frame(self, link: Link, frame: frames.Frame) -> None:
        if self._inbox is not None:
            self._inbox.on_link_frame(link, frame)

    def _on_link_state(self, link: Link, state: LinkState, user_id: int) -> None:
        if state is not LinkState.NEW:
            self._publish(LinkChanged(user_id, link.remote_device, str(state)))

    def _key_warning(self, warning: KeyWarning) -> None:
        self._publish(warning)

    async def _on_server_frame(self, frame: ServerFrame) -> None:
        links = self._need()[2]
        if isinstance(frame, DeliverFrame):
            await self._need_inbox().receive(
                frame.envelope, via=QUEUED if frame.queued else RELAYED, link=None, server_id=frame.message_id
            )
        elif isinstance(frame, SignalFrame):
            self._spawn(links.handle_signal(frame), "signal")
        elif isinstance(frame, PresenceFrame):
            if frame.device_id is not None:
                self._device_presence[frame.device_id] = frame.online
                keyring = self._need()[1]
                if frame.online and keyring.identity_key(frame.user_id, frame.device_id) is None:
                    # A device we have not pinned came online: fetch its bundle (and warn) now.
                    self._spawn(keyring.refresh(frame.user_id, force=True), "refresh-keys")
                if not frame.online:
                    self._spawn(links.drop(frame.device_id), "drop-link")
            if frame.online:
                self._offline_users.discard(frame.user_id)
            elif frame.device_id is None:
                self._offline_users.add(frame.user_id)
            self._publish(PresenceChanged(frame.user_id, frame.device_id, frame.online))
        elif isinstance(frame, ErrorFrame):
            if frame.code == ErrorCode.UNKNOWN_DEVICE and frame.ref is None and frame.device_id:
                # A signal to a device that is not connected: stop waiting for its answer.
                for link in links.links():
                    if link.remote_device == frame.device_id and not link.is_open:
                        self._device_presence[link.remote_device] = False
                        self._spawn(links.drop(link.remote_device), "drop-link")
            else:
                self._publish(ErrorEvent(f"server: {frame.message}"))
        elif isinstance(frame, ContactFrame):
            self._spawn(self._on_contact(frame), "contact")
        elif isinstance(frame, ReadyFrame):
            pass

    # ---------------------------------------------------------------------------------------------
    # sending
    # ---------------------------------------------------------------------------------------------

    async def send_text(self, to: int | str, body: str) -> MessageView:
        conversation = conversation_of(to)
        return await self._need_outbox().send_text(conversation, body)

    async def send_typing(self, to: int | str, active: bool) -> None:
        conversation = conversation_of(to)
        await self._need_outbox().send_typing(conversation, active)

    async def mark_read(self, to: int | str, message_ids: list[str]) -> None:
        conversation = conversation_of(to)
        await self._need_outbox().mark_read(conversation, message_ids)

    async def send_file(self, to: int | str, path: str | os.PathLike[str]) -> MessageView:
        """Offer a file and move it: direct over links when every device has one, else a blob."""
        outbox = self._need_outbox()
        return await outbox.send_file(conversation_of(to), path)

    @property
    def download_dir(self) -> Path:
        if self.settings.download_dir is not None:
            return Path(self.settings.download_dir)
        return Path(platformdirs.user_downloads_dir()) / "PeerPost"

    async def wait_file(self, message_id: str, within: float = 60.0) -> Path:
        """Wait until an incoming file is complete and checked; its decrypted copy's path."""
        record = await self._need()[5].wait_received(message_id, within)
        if record is None or record.state != "done":
            raise PeerError(f"file {message_id} did not arrive: {record.state if record else 'unknown'}")
        if record.export_path:
            return Path(record.export_path)
        return await self.export_file(message_id)

    async def export_file(self, message_id: str, folder: str | os.PathLike[str] | None = None) -> Path:
        """Decrypt a received file (kept sealed in the profile) into `folder` (default: download_dir)."""
        record = await self._need()[0].get_transfer(message_id)
        if record is None or record.outgoing or record.state != "done":
            raise PeerError(f"there is no received file {message_id}")
        manifest = FileManifest.from_dict(record.manifest)
        target = Path(folder) if folder is not None else self.download_dir
        return await asyncio.to_thread(export_sealed, manifest, Path(record.local_path), target, message_id)

    # ---------------------------------------------------------------------------------------------
    # history
    # ---------------------------------------------------------------------------------------------

    async def history(
        self, to: int | str | None = None, limit: int = 100, before_ms: int | None = None
    ) -> list[MessageView]:
        history = self._need_history()
        conversation = conversation_of(to) if to is not None else None
        return await history.history(conversation, limit, before_ms)

    async def message(self, message_id: str) -> MessageView | None:
        return await self._need_history().message(message_id)

    async def conversations(self) -> list[tuple[str, int]]:
        return await self._need_history().conversations()

    # ---------------------------------------------------------------------------------------------
    # contacts, devices, trust
    # ---------------------------------------------------------------------------------------------

    async def contacts(
        self, status: ContactStatus | str | None = None, group: str | None = None
    ) -> list[ContactOut]:
        result = await self._client.contacts(ContactStatus(status) if status else None, group)
        if self._store is not None and status is None and group is None:
            await self._store.cache_contacts([c.model_dump(mode="json") for c in result])
        return result

    async def cached_contacts(self) -> list[dict[str, Any]]:
        return await self._need()[0].cached_contacts()

    async def contact_requests(self) -> tuple[list[ContactOut], list[ContactOut]]:
        incoming = await self._client.contact_requests("incoming")
        outgoing = await self._client.contact_requests("outgoing")
        return incoming, outgoing

    async def search(self, query: str) -> list[UserPublic]:
        return await self._client.search_users(query)

    async def resolve_user(self, who: int | str) -> int:
        """A user id from an id or a username (exact match)."""
        if isinstance(who, int) or (isinstance(who, str) and who.isdigit()):
            return int(who)
        for user in await self._client.search_users(who, limit=50):
            if user.username.lower() == who.lower():
                return user.id
        raise UnknownContact(f"there is no user called {who!r}")

    async def add_contact(self, who: int | str) -> ContactOut:
        if isinstance(who, int) or who.isdigit():
            return await self._client.add_contact(friend_id=int(who))
        return await self._client.add_contact(username=who)

    async def accept_contact(self, user_id: int) -> ContactOut:
        return await self._client.accept_contact(user_id)

    async def decline_contact(self, user_id: int) -> None:
        await self._client.decline_contact(user_id)

    async def remove_contact(self, user_id: int) -> None:
        await self._client.remove_contact(user_id)

    async def set_contact(self, user_id: int, **changes: str | None) -> ContactOut:
        return await self._client.update_contact(user_id, ContactUpdate(**changes))

    async def devices(self, user_id: int | None = None) -> list[DeviceInfo]:
        keyring = self._need()[1]
        uid = self.me.user_id if user_id is None else user_id
        await keyring.refresh(uid, force=True)
        return [
            DeviceInfo(
                d.user_id,
                d.device_id,
                d.fingerprint,
                d.confirmed,
                d.revoked,
                d.offered_identity_key is not None,
                d.user_id == self.me.user_id and d.device_id == self.me.device_id,
            )
            for d in keyring.devices_of(uid)
        ]

    async def revoke_device(self, device_id: str) -> None:
        await self._client.revoke_device(device_id)

    async def safety_number(self, user_id: int) -> SafetyNumber:
        keyring = self._need()[1]
        await keyring.refresh(user_id, force=True)
        await keyring.refresh(self.me.user_id, force=True)
        theirs = [d.identity_key for d in keyring.devices_of(user_id) if not d.revoked]
        mine = [d.identity_key for d in keyring.devices_of(self.me.user_id) if not d.revoked]
        if not theirs:
            raise UnknownContact(f"user {user_id} has no published device key")
        digits = safety_number(self.me.user_id, mine, user_id, theirs)
        return SafetyNumber(
            user_id,
            digits,
            format_safety_number(digits),
            safety_qr_text(digits),
            safety_qr_svg(digits),
            keyring.is_verified(user_id),
        )

    async def verify_contact(self, user_id: int) -> None:
        await self._need()[1].set_verified(user_id, True)

    async def unverify_contact(self, user_id: int) -> None:
        await self._need()[1].set_verified(user_id, False)

    async def is_verified(self, user_id: int) -> bool:
        return self._need()[1].is_verified(user_id)

    async def accept_key_change(self, user_id: int) -> None:
        await self._need()[1].accept_change(user_id)

    # ---------------------------------------------------------------------------------------------
    # settings that can change while running
    # ---------------------------------------------------------------------------------------------

    async def set_direct(self, enabled: bool) -> None:
        """Allow or forbid direct links from now on (forbidding closes the open ones)."""
        self.settings = replace(self.settings, direct=enabled)
        if self._router is not None:
            self._router.policy = replace(self._router.policy, direct=enabled)
        if self._outbox is not None:
            self._outbox.direct = enabled
        if self._links is not None:
            self._links.ignore_signals = not (enabled and self.settings.answer_offers)
            if not enabled:
                for link in self._links.links():
                    await self._links.drop(link.remote_device)

    # ---------------------------------------------------------------------------------------------
    # introspection (UI, tests, bench)
    # ---------------------------------------------------------------------------------------------

    def link_to(self, device_id: str) -> Link | None:
        return self._links.link(device_id) if self._links is not None else None

    @property
    def linkset(self) -> LinkSet:
        return self._need()[2]

    @property
    def session(self) -> HubSession:
        return self._need()[4]
