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
import functools
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import platformdirs
from aiortc import RTCIceServer

from crypto.atrest import open_at_rest, seal_at_rest
from crypto.bundle import make_bundle
from crypto.envelope import LocalDevice
from crypto.errors import (
    AtRestError,
    CryptoError,
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
from peer import frames, pairwise_path
from peer.client import ServerClient, normalise_server_url
from peer.errors import (
    AuthFailed,
    ConfigError,
    CryptoFailure,
    LoginNeeded,
    NoServer,
    NotLoggedIn,
    PeerError,
    PeerStateError,
    ProfileTaken,
    ServerError,
    ServerUnavailable,
    UnknownContact,
    WrongPassword,
)
from peer.events import (
    ConnectionChanged,
    ContactChanged,
    ErrorEvent,
    Event,
    EventBus,
    EventHandlers,
    KeygenProgress,
    KeyWarning,
    LinkChanged,
    PresenceChanged,
    PresenceSnapshot,
    ReadMarked,
    SignalRejectedEvent,
    StateChanged,
)
from peer.group_chat import GroupChat
from peer.history import History
from peer.inbox import Inbox
from peer.keyring import Keyring
from peer.link import Link, LinkSettings, LinkState
from peer.linkset import LinkSet
from peer.localstore import LocalStore
from peer.outbox import Outbox
from peer.pairwise_path import PairwisePath
from peer.prekeystock import PrekeyStock
from peer.presence import Presence
from peer.profile import Profile, ProfileMeta, write_private
from peer.router import RoutePolicy, Router
from peer.search import SearchIndex
from peer.session import Backoff, HubSession, SessionTap
from peer.transfer import FileTransfers, export_sealed
from peer.views import (
    ContactBook,
    ConversationSummary,
    DeviceInfo,
    GroupMemberView,
    GroupView,
    Me,
    MessageView,
    PeerSettings,
    SafetyNumber,
    conversation_of,
)
from peer.vocab import DeliveryPath
from signalling.protocol import (
    BlockOut,
    ContactDirection,
    ContactEvent,
    ContactFrame,
    ContactOut,
    ContactStatus,
    ContactUpdate,
    DeliverFrame,
    DeviceBundleIn,
    ErrorCode,
    ErrorFrame,
    GroupFrame,
    GroupsFrame,
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
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
P = ParamSpec("P")
T = TypeVar("T")


class PeerState(StrEnum):
    """Where a `Peer` is in its life; it only ever moves forward (a failed start goes back to NEW).

    NEW → STARTING (logging in or unlocking; the parts are being built) → RUNNING (every part up,
    online or not) → CLOSING → CLOSED. As aiortc's transports do, one `_set_state` makes every
    change, and announces it (`StateChanged`).
    """

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class _Running:
    """Everything a logged-in peer runs on, made together in `Peer._build` and never changed after.

    A peer either has the whole record (RUNNING) or none of it: no half-built peer, no `None`
    checks spread over the methods.
    """

    me: Me
    keystore: Keystore
    store: LocalStore
    keyring: Keyring
    history: History
    session: HubSession
    links: LinkSet
    router: Router
    transfers: FileTransfers
    outbox: Outbox
    inbox: Inbox
    groups: GroupChat
    pairwise: PairwisePath | None = None  # None: forward secrecy off (envelope v2 only)
    prekeys: PrekeyStock | None = None

    @property
    def local_device(self) -> LocalDevice:
        return LocalDevice(self.me.user_id, self.me.device_id, self.keystore.keys)


def new_device_id() -> str:
    """A fresh device id: 20 characters of [A-Za-z0-9], starting with 'd' (never reused)."""
    return "d" + secrets.token_urlsafe(15).replace("-", "x").replace("_", "y")[:19]


def _mapped(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The Peer boundary: what the parts below raise leaves as a `PeerError` (httpx's
    `map_exceptions`): a `CryptoError` becomes `CryptoFailure` with the same sentence."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except CryptoError as e:
            raise CryptoFailure(str(e)) from e

    return wrapper


class Peer:
    """One device's peer. Public methods raise only `PeerError`s (see `peer.errors`).

    Seams for tests and embedders: `server_client` (a `ServerClient`, e.g. over an in-process
    `httpx.ASGITransport` via `transport`), `session_tap` (sees every message id that crossed the
    server), `session_keys` / `unwrap_cache` (the envelope key caches, to observe their use).
    """

    def __init__(
        self,
        profile: Profile,
        server_url: str | None = None,
        *,
        settings: PeerSettings | None = None,
        server_client: ServerClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        session_tap: SessionTap | None = None,
        session_keys: SessionKeyCache | None = None,
        unwrap_cache: UnwrapCache | None = None,
    ) -> None:
        self.profile = profile
        self.settings = settings or PeerSettings()
        meta = profile.load_meta()
        url = server_url or (server_client.server_url if server_client else None)
        url = url or (meta.server_url if meta else None)
        if not url:
            raise NoServer("no server given and the profile has none saved")
        self.server_url = normalise_server_url(url)
        self.state = PeerState.NEW
        self._bus = EventBus()
        self._client = server_client or ServerClient(self.server_url, transport=transport)
        self._client.on_tokens = None  # nothing to seal them with until the keystore is open
        self._session_tap = session_tap
        # Envelope v2 session keys, in memory for this peer's lifetime only (never on disk): the
        # sender reuses one RSA-wrapped key per remote device, the receiver skips RSA for known ones.
        self._session_keys = session_keys if session_keys is not None else SessionKeyCache()
        self._unwrap_cache = unwrap_cache if unwrap_cache is not None else UnwrapCache()
        self._running: _Running | None = None
        self.presence = Presence()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._contact_news = asyncio.Lock()  # FIFO: contact events keep the order the server sent
        self._search_index: SearchIndex | None = None  # built at the first search (peer/search.py)

    # ---------------------------------------------------------------------------------------------
    # lifetime
    # ---------------------------------------------------------------------------------------------

    def _set_state(self, state: PeerState) -> None:
        if state is self.state:
            return
        log.debug("peer %s: %s -> %s", self.profile.name, self.state, state)
        self.state = state
        self._publish(StateChanged(state.value))

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.state in (PeerState.CLOSING, PeerState.CLOSED):
            return
        # Receipts still on their way get a moment (a short CLI command would otherwise drop them).
        pending = [t for t in self._tasks if t.get_name() == "receipt" and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self._set_state(PeerState.CLOSING)
        running = self._running  # kept (closed) after this: `me` still names who this was
        if running is not None:
            await running.session.close()
            await running.links.close()
            await running.router.close()
            running.inbox.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if running is not None:
            running.transfers.close()
            await running.store.close()
        self.presence.clear()
        self._session_keys.clear()
        self._unwrap_cache.clear()
        await self._client.aclose()
        self._set_state(PeerState.CLOSED)
        self._bus.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        if self.state in (PeerState.CLOSING, PeerState.CLOSED):
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
        except (PeerError, CryptoError) as e:
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

    def follow(self, handlers: EventHandlers) -> contextlib.AbstractAsyncContextManager[None]:
        """`async with peer.follow(handlers): ...` — every event from now on goes to `handlers`
        (by event class, see `peer.events.EventHandlers`) until the block ends: the one
        subscribe / pump / cancel loop for every command and window."""
        return handlers.follow(self._bus)

    def _parts(self) -> _Running:
        """The running parts; only while RUNNING (a closed peer's parts are closed too)."""
        running = self._running
        if self.state in (PeerState.CLOSING, PeerState.CLOSED):
            raise PeerStateError("this peer is closed")
        if running is None:
            raise NotLoggedIn("this peer has not logged in", LoginNeeded.NOT_STARTED)
        return running

    # ---------------------------------------------------------------------------------------------
    # session
    # ---------------------------------------------------------------------------------------------

    @property
    def me(self) -> Me:
        """Who this peer is (still answered after `close`)."""
        if self._running is None:
            raise NotLoggedIn("this peer has not logged in", LoginNeeded.NOT_STARTED)
        return self._running.me

    @property
    def online(self) -> bool:
        return self._running is not None and self._running.session.connected

    @property
    def offline_reason(self) -> str | None:
        """Why the peer is not connected to the server, in words (None while it is)."""
        running = self._running
        if running is None:
            return "not logged in"
        return None if running.session.connected else running.session.status_reason

    async def wait_online(self, within: float = 10.0) -> bool:
        if self._running is None:
            return False
        return await self._running.session.wait_connected(within)

    def reconnect_now(self) -> None:
        """Skip the rest of the back-off and try the server again at once (the UI's "retry now")."""
        if self._running is not None:
            self._running.session.retry_now()

    def _seal_tokens(self, keystore: Keystore, tokens: TokenPair | None) -> None:
        if tokens is None:
            self.profile.session_path.unlink(missing_ok=True)
            return
        sealed = seal_at_rest(keystore.storage_key, tokens.model_dump_json().encode(), aad=b"session")
        write_private(self.profile.session_path, sealed)

    def _progress(self, progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
        loop = asyncio.get_running_loop()

        def report(fraction: float, label: str) -> None:  # called from the keygen thread
            loop.call_soon_threadsafe(self._publish, KeygenProgress(fraction, label))
            if progress is not None:
                loop.call_soon_threadsafe(progress, fraction, label)

        return report

    @_mapped
    async def register(
        self, username: str, email: str, password: str, progress: Callable[[float, str], None] | None = None
    ) -> Me:
        self._check_new()
        await self._client.register(username, email, password)
        return await self.login(username, password, progress)

    @_mapped
    async def login(
        self, username: str, password: str, progress: Callable[[float, str], None] | None = None
    ) -> Me:
        """Log in; the first login on this profile makes and publishes this device's keys."""
        self._check_new()
        self._set_state(PeerState.STARTING)
        try:
            meta = self.profile.load_meta()
            known = meta is not None and self.profile.keystore_path.exists()
            # The device id is chosen before the login, so the tokens are this device's from the
            # start (revoking the device ends them; the account's other devices keep theirs).
            device_id = meta.device_id if meta is not None and known else new_device_id()
            await self._client.login(username, password, device_id)
            account = await self._client.me()
            if meta is not None and known:
                if meta.user_id != account.id:
                    await self._client.logout()
                    raise ProfileTaken(f"profile {self.profile.name!r} belongs to {meta.username}")
                keystore = await self._open_keystore(password)
            else:
                keys = self.settings.device_keys
                if keys is None:
                    keys = await asyncio.to_thread(generate_device_keys, self._progress(progress))
                self.profile.ensure()
                info = {"user_id": account.id, "device_id": device_id, "username": account.username}
                keystore = await asyncio.to_thread(
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
            self._seal_tokens(keystore, self._client.tokens)
            me = Me(account.id, account.username, meta.device_id, self.server_url)
            await self._start(me, keystore)
        except BaseException:
            self._start_failed()
            raise
        return me

    @_mapped
    async def unlock(self, password: str) -> Me:
        """Open the keystore and resume the stored session (later runs of the CLI, the UI)."""
        self._check_new()
        self._set_state(PeerState.STARTING)
        try:
            meta = self.profile.load_meta()
            if meta is None or not self.profile.keystore_path.exists():
                raise NotLoggedIn(f"profile {self.profile.name!r} has never logged in", LoginNeeded.NEVER)
            keystore = await self._open_keystore(password)
            try:
                sealed = await asyncio.to_thread(self.profile.session_path.read_bytes)
                tokens = TokenPair.model_validate_json(
                    open_at_rest(keystore.storage_key, sealed, aad=b"session")
                )
            except (FileNotFoundError, AtRestError, ValueError) as e:
                raise NotLoggedIn("logged out", LoginNeeded.LOGGED_OUT) from e
            self._client.tokens = tokens
            self._client.on_tokens = functools.partial(self._seal_tokens, keystore)
            try:
                account = await self._client.me()
                user_id, username = account.id, account.username
            except AuthFailed as e:
                raise NotLoggedIn("the session expired", LoginNeeded.EXPIRED) from e
            except ServerUnavailable:
                # Offline start (the resident node): who we are is on disk; the hub session connects
                # when the server is back, and history, contacts and the outbox work meanwhile.
                user_id, username = meta.user_id, meta.username
            me = Me(user_id, username, meta.device_id, self.server_url)
            await self._start(me, keystore)
        except BaseException:
            self._start_failed()
            raise
        return me

    def _start_failed(self) -> None:
        if self.state is PeerState.STARTING:
            self._client.on_tokens = None
            self._set_state(PeerState.NEW)

    async def _open_keystore(self, password: str) -> Keystore:
        try:
            return await asyncio.to_thread(load_keystore, self.profile.keystore_path, password)
        except KeystoreLocked as e:
            raise WrongPassword("wrong password for this profile's keystore") from e
        except KeystoreCorrupt as e:
            raise ConfigError(f"the keystore of profile {self.profile.name!r} is damaged: {e}") from e

    def _check_new(self) -> None:
        if self.state is PeerState.RUNNING:
            raise PeerStateError("this peer is already logged in")
        if self.state is PeerState.STARTING:
            raise PeerStateError("this peer is already logging in")
        if self.state is not PeerState.NEW:
            raise PeerStateError("this peer is closed")

    @_mapped
    async def logout(self) -> None:
        with contextlib.suppress(ServerError):
            await self._client.logout()
        self.profile.session_path.unlink(missing_ok=True)
        if self._running is not None:
            await self._running.session.close()

    @_mapped
    async def change_password(self, old: str, new: str) -> None:
        await self._client.update_me(UserUpdate(password=new, current_password=old))
        await asyncio.to_thread(change_keystore_password, self.profile.keystore_path, old, new)

    @_mapped
    async def delete_account(self) -> None:
        await self._client.delete_account()
        self.profile.session_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------
    # start-up
    # ---------------------------------------------------------------------------------------------

    @property
    def local_device(self) -> LocalDevice:
        return self._parts().local_device

    async def _start(self, me: Me, keystore: Keystore) -> None:
        self._client.on_tokens = functools.partial(self._seal_tokens, keystore)
        self.profile.ensure()
        store = LocalStore(self.profile.db_path, keystore.storage_key)
        await store.open()
        try:
            running = await self._build(me, keystore, store)
            if self.state is not PeerState.STARTING:  # closed while it was starting
                raise PeerStateError("this peer was closed while it was starting")
        except BaseException:
            await store.close()
            raise
        self._running = running
        self._set_state(PeerState.RUNNING)
        self._spawn(running.inbox.run(), "inbox")
        self._spawn(running.inbox.disappearing.run(), "disappearing")  # peer/disappearing.py
        if running.pairwise is not None and running.prekeys is not None:
            self._spawn(pairwise_path.maintain(running.pairwise, running.prekeys, self._client), "prekeys")
        if self.settings.online:
            running.session.start()

    async def _build(self, me: Me, keystore: Keystore, store: LocalStore) -> _Running:
        """Make every part, wired to each other; nothing runs until `_start` says so."""
        keyring = Keyring(
            store,
            self._client,
            me.user_id,
            me.device_id,
            self._publish,
            refresh_after=self.settings.key_refresh_after,
        )
        await keyring.load()
        history = History(store, me.device_id)
        with contextlib.suppress(ServerUnavailable):  # offline start: published after the connect
            await self._ensure_published(me, keystore)

        ice = self.settings.ice_servers
        if ice is None:
            try:
                ice = await self._server_ice()
            except ServerUnavailable:
                ice = ()  # fetched again on every connect (_after_connect)
        link_settings = LinkSettings(
            ice_servers=tuple(ice),
            host_addresses=self.settings.host_addresses,
            setup_deadline=self.settings.link_deadline,
            ping_interval=self.settings.keepalive,
            dead_after=self.settings.dead_after,
        )
        session = HubSession(
            self._client,
            me.device_id,
            self._on_server_frame,
            self._on_connection,
            backoff=Backoff(self.settings.reconnect_base, self.settings.reconnect_cap),
            tap=self._session_tap,
        )
        links = LinkSet(
            user_id=me.user_id,
            device_id=me.device_id,
            keys=keystore.keys,
            settings=link_settings,
            send_signal=session.send_signal,
            pinned_identity=keyring.ensure_sender,
            on_frame=self._on_link_frame,
            on_link_state=self._on_link_state,
            on_rejected=lambda u, d, why: self._publish(SignalRejectedEvent(u, d, why)),
        )
        links.ignore_signals = not self.settings.answer_offers
        policy = RoutePolicy(
            link_deadline=self.settings.link_deadline,
            ack_deadline=self.settings.ack_deadline,
            server_deadline=self.settings.server_deadline,
            direct=self.settings.direct,
            retry_after=self.settings.link_retry_after,
        )
        router = Router(links, session, store, policy, self.presence.device_online)
        transfers = FileTransfers(
            store,
            self._client,
            links,
            self.profile,
            self._publish,
            link_deadline=self.settings.link_deadline,
            stall_after=self.settings.dead_after,
            download_dir=self.download_dir if self.settings.auto_export else None,
            device_online=self.presence.device_online,
        )
        local_device = LocalDevice(me.user_id, me.device_id, keystore.keys)
        pairwise, prekeys = None, None
        if self.settings.forward_secrecy:
            pairwise, prekeys = pairwise_path.build(
                store=store,
                keys=keystore.keys,
                user_id=me.user_id,
                device_id=me.device_id,
                client=self._client,
                pinned=keyring.identity_key,
                router=router,
                server=session,
                server_deadline=self.settings.server_deadline,
            )
            await pairwise.prepare()
            with contextlib.suppress(ServerUnavailable):  # offline start: refreshed after the connect
                await prekeys.refresh(self._client)
        outbox = Outbox(
            me=me,
            local_device=local_device,
            store=store,
            keyring=keyring,
            links=links,
            router=router,
            transfers=transfers,
            history=history,
            session_keys=self._session_keys,
            publish=self._publish,
            device_online=self.presence.device_online,
            direct=self.settings.direct,
            link_deadline=self.settings.link_deadline,
            pairwise=pairwise,
        )
        inbox = Inbox(
            me=me,
            local_device=local_device,
            store=store,
            keyring=keyring,
            router=router,
            session=session,
            transfers=transfers,
            history=history,
            outbox=outbox,
            unwrap_cache=self._unwrap_cache,
            publish=self._publish,
            spawn=self._spawn,
            receipts=self.settings.receipts,
            edit_window=self.settings.edit_window,
            pairwise=pairwise,
        )
        groups = GroupChat(
            me=me,
            local_device=local_device,
            store=store,
            keyring=keyring,
            client=self._client,
            hub=session,
            links=links,
            router=router,
            outbox=outbox,
            transfers=transfers,
            history=history,
            publish=self._publish,
            spawn=self._spawn,
            server_deadline=self.settings.server_deadline,
            receipts=self.settings.receipts,
            presence=self.presence,
        )
        await inbox.edits.prepare()
        groups.direct = self.settings.direct
        await groups.load()
        outbox.groups = groups
        inbox.groups = groups
        groups.edits = inbox.edits
        return _Running(
            me=me,
            keystore=keystore,
            store=store,
            keyring=keyring,
            history=history,
            session=session,
            links=links,
            router=router,
            transfers=transfers,
            outbox=outbox,
            inbox=inbox,
            groups=groups,
            pairwise=pairwise,
            prekeys=prekeys,
        )

    async def _server_ice(self) -> tuple[RTCIceServer, ...]:
        """The server's STUN/TURN list (TURN credentials expire: fetched again on every connect)."""
        config = await self._client.ice()
        return tuple(
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in config.ice_servers
        )

    async def _ensure_published(self, me: Me, keystore: Keystore) -> None:
        mine = await self._client.devices(me.user_id)
        if any(d.device_id == me.device_id and not d.revoked for d in mine):
            return
        bundle = make_bundle(keystore.keys, me.user_id, me.device_id)
        await self._client.publish_device(
            DeviceBundleIn(
                device_id=bundle.device_id,
                identity_key=b64encode(bundle.identity_key),
                encryption_key=b64encode(bundle.encryption_key),
                created_at=bundle.created_at,
                signature=b64encode(bundle.signature),
            )
        )

    # ---------------------------------------------------------------------------------------------
    # presence and connection
    # ---------------------------------------------------------------------------------------------

    async def _on_connection(self, up: bool, reason: str | None) -> None:
        self._publish(ConnectionChanged(up, reason))
        if up:
            self._spawn(self._after_connect(), "after-connect")

    async def _after_connect(self) -> None:
        parts = self._parts()
        if self.settings.ice_servers is None:
            with contextlib.suppress(ServerError):
                parts.links.settings = replace(parts.links.settings, ice_servers=await self._server_ice())
        with contextlib.suppress(ServerError):
            await self._ensure_published(parts.me, parts.keystore)  # after an offline start
        with contextlib.suppress(ServerError):
            await parts.keyring.refresh(parts.me.user_id, force=True)  # own devices added meanwhile
        with contextlib.suppress(ServerError):
            await self._reload_contacts()
        if parts.prekeys is not None:
            with contextlib.suppress(ServerError):
                await parts.prekeys.refresh(self._client)  # after an offline start, and refills
        for message_id, _ in await parts.router.flush_outbox():
            await parts.outbox.refresh_state(message_id)
        if parts.pairwise is not None:
            for message_id in await parts.pairwise.flush():
                await parts.outbox.refresh_state(message_id)
        await parts.groups.flush()  # after the 1:1 outboxes: a sender key goes before its message

    async def _reload_contacts(self) -> list[ContactOut]:
        """The contacts cache and presence, from the server's list (raises ServerError)."""
        contacts = await self._client.contacts()
        self.presence.seed(contacts)
        await self._parts().store.cache_contacts([c.model_dump(mode="json") for c in contacts])
        self._publish(PresenceSnapshot(tuple(sorted(self.presence.online_users()))))
        return contacts

    async def _on_contact(self, frame: ContactFrame) -> None:
        """A contact change pushed by the hub: bring the cache (and keys, links) in line, then say so.

        Runs as its own task (REST calls must not hold up the hub session's reader); the lock is
        FIFO, so the events still come out in the order the server sent them.
        """
        async with self._contact_news:
            parts = self._parts()
            with contextlib.suppress(ServerError):
                await self._reload_contacts()
            if frame.event is ContactEvent.ACCEPTED:
                with contextlib.suppress(ServerError):
                    await parts.keyring.refresh(frame.user_id, force=True)  # ready to write to them now
            elif frame.event in (ContactEvent.REMOVED, ContactEvent.BLOCKED):
                # The hub no longer relays between us; a direct link would still carry their
                # messages (a blocked user's above all): drop it, and the hub refuses a new one.
                for device in parts.keyring.devices_of(frame.user_id):
                    await parts.links.drop(device.device_id)
            contact = frame.contact.model_dump(mode="json") if frame.contact is not None else None
            news = ContactChanged(frame.event.value, frame.user_id, frame.username, frame.by_me, contact)
            self._publish(news)

    def _on_link_frame(self, link: Link, frame: frames.Frame) -> None:
        if self.state is PeerState.RUNNING and self._running is not None:
            self._running.inbox.on_link_frame(link, frame)

    def _on_link_state(self, link: Link, state: LinkState, user_id: int) -> None:
        if state is not LinkState.NEW:
            self._publish(LinkChanged(user_id, link.remote_device, str(state)))

    async def _on_server_frame(self, frame: ServerFrame) -> None:
        parts = self._parts()
        if isinstance(frame, DeliverFrame):
            await parts.inbox.receive(
                frame.envelope,
                via=DeliveryPath.QUEUED if frame.queued else DeliveryPath.RELAYED,
                link=None,
                server_id=frame.message_id,
            )
        elif isinstance(frame, SignalFrame):
            self._spawn(parts.links.handle_signal(frame), "signal")
        elif isinstance(frame, PresenceFrame):
            self.presence.apply(frame)
            if frame.device_id is not None:
                if frame.online and parts.keyring.identity_key(frame.user_id, frame.device_id) is None:
                    # A device we have not pinned came online: fetch its bundle (and warn) now —
                    # the one refresh for it (the UI reads the keyring's warnings, it fetches none).
                    self._spawn(parts.keyring.refresh(frame.user_id, force=True), "refresh-keys")
                if not frame.online:
                    self._spawn(parts.links.drop(frame.device_id), "drop-link")
                    # Gone for good (revoked)? The refresh says so: a "device removed" notice.
                    self._spawn(parts.keyring.refresh(frame.user_id, force=True), "refresh-keys")
            self._publish(PresenceChanged(frame.user_id, frame.device_id, frame.online))
        elif isinstance(frame, ErrorFrame):
            if frame.code == ErrorCode.UNKNOWN_DEVICE and frame.ref is None and frame.device_id:
                # A signal to a device that is not connected: stop waiting for its answer.
                for link in parts.links.links():
                    if link.remote_device == frame.device_id and not link.is_open:
                        self.presence.device_gone(link.remote_device)
                        self._spawn(parts.links.drop(link.remote_device), "drop-link")
            else:
                self._publish(ErrorEvent(f"server: {frame.message}"))
        elif isinstance(frame, ContactFrame):
            self._spawn(self._on_contact(frame), "contact")
        elif isinstance(frame, GroupFrame):
            parts.groups.on_group_frame(frame)
        elif isinstance(frame, GroupsFrame):
            parts.groups.on_groups_frame(frame)
        elif isinstance(frame, ReadyFrame):
            pass

    # ---------------------------------------------------------------------------------------------
    # sending
    # ---------------------------------------------------------------------------------------------

    @_mapped
    async def send_text(self, to: int | str, body: str) -> MessageView:
        conversation = conversation_of(to)
        return await self._parts().outbox.send_text(conversation, body)

    @_mapped
    async def send_typing(self, to: int | str, active: bool) -> None:
        conversation = conversation_of(to)
        await self._parts().outbox.send_typing(conversation, active)

    @_mapped
    async def mark_read(self, to: int | str, message_ids: list[str]) -> list[str]:
        """Mark incoming messages read here and tell the sender; returns the ids newly read.

        Only what changes is receipted (a message read twice is receipted once), and a file only
        once it has arrived whole. The local mark stands even if the receipt cannot go now.
        """
        conversation = conversation_of(to)
        parts = self._parts()
        marked = await parts.store.mark_read(conversation, message_ids)
        if not marked:
            return []
        unread = await parts.store.unread_count(conversation)
        self._publish(ReadMarked(conversation, tuple(marked), unread))
        await parts.outbox.mark_read(conversation, marked)
        return marked

    @_mapped
    async def send_file(
        self, to: int | str, path: str | os.PathLike[str], *, message_id: str | None = None
    ) -> MessageView:
        """Offer a file and move it: direct over links when every device has one, else a blob.

        `message_id` (32 hex digits, fresh) lets a caller follow the transfer's `FileProgress`
        events before this returns; by default a random one is made."""
        if message_id is not None and not _MESSAGE_ID.fullmatch(message_id):
            raise ConfigError(f"{message_id!r} is not a message id (32 hex digits)")
        outbox = self._parts().outbox
        return await outbox.send_file(conversation_of(to), path, message_id)

    @staticmethod
    def new_message_id() -> str:
        return os.urandom(16).hex()

    @property
    def download_dir(self) -> Path:
        if self.settings.download_dir is not None:
            return Path(self.settings.download_dir)
        return Path(platformdirs.user_downloads_dir()) / "PeerPost"

    @_mapped
    async def wait_file(self, message_id: str, within: float = 60.0) -> Path:
        """Wait until an incoming file is complete and checked; its decrypted copy's path."""
        record = await self._parts().transfers.wait_received(message_id, within)
        if record is None or record.state != "done":
            raise PeerError(f"file {message_id} did not arrive: {record.state if record else 'unknown'}")
        if record.export_path:
            return Path(record.export_path)
        return await self.export_file(message_id)

    @_mapped
    async def export_file(self, message_id: str, folder: str | os.PathLike[str] | None = None) -> Path:
        """Decrypt a received file (kept sealed in the profile) into `folder` (default: download_dir)."""
        record = await self._parts().store.get_transfer(message_id)
        if record is None or record.outgoing or record.state != "done":
            raise PeerError(f"there is no received file {message_id}")
        manifest = FileManifest.from_dict(record.manifest)
        target = Path(folder) if folder is not None else self.download_dir
        return await asyncio.to_thread(export_sealed, manifest, Path(record.local_path), target, message_id)

    # ---------------------------------------------------------------------------------------------
    # groups (peer/group_chat.py; the conversation methods take "g:<id>" too)
    # ---------------------------------------------------------------------------------------------

    @_mapped
    async def create_group(self, name: str, members: list[int]) -> GroupView:
        """A new group with this user as its admin and `members` (accepted contacts) in it."""
        return await self._parts().groups.create(name, members)

    @_mapped
    async def add_group_members(self, group_id: str, user_ids: list[int]) -> GroupView:
        return await self._parts().groups.add(group_id, user_ids)

    @_mapped
    async def remove_group_member(self, group_id: str, user_id: int) -> GroupView:
        """Remove a member (admins only); this device's sender key is replaced before the next
        message, so the removed one cannot read what follows."""
        return await self._parts().groups.remove(group_id, user_id)

    @_mapped
    async def rename_group(self, group_id: str, name: str) -> GroupView:
        return await self._parts().groups.rename(group_id, name)

    @_mapped
    async def promote_group_member(self, group_id: str, user_id: int) -> GroupView:
        return await self._parts().groups.promote(group_id, user_id)

    @_mapped
    async def leave_group(self, group_id: str) -> None:
        await self._parts().groups.leave(group_id)

    @_mapped
    async def groups(self) -> list[GroupView]:
        """The groups this device verified (from the local store: works offline)."""
        return self._parts().groups.groups()

    @_mapped
    async def group(self, group_id: str) -> GroupView:
        return self._parts().groups.view(group_id)

    @_mapped
    async def group_members(self, group_id: str) -> list[GroupMemberView]:
        return await self._parts().groups.members(group_id)

    @_mapped
    async def resolve_group(self, ref: str) -> str:
        """A group id from "#NAME" or "#<id>"; an ambiguous name is an error listing the ids."""
        return self._parts().groups.resolve(ref)

    def group_usernames(self) -> dict[int, str]:
        """Usernames of the members of this device's groups (local: works offline)."""
        running = self._running
        return running.groups.usernames() if running is not None else {}

    def group_name(self, group_id: str) -> str | None:
        """The verified name of a group this device knows (None: unknown)."""
        running = self._running
        return running.groups.name_of(group_id) if running is not None else None

    @_mapped
    async def sync_group(self, group_id: str) -> GroupView:
        """Fetch and verify the group's chain now (what a `group` frame triggers)."""
        groups = self._parts().groups
        await groups.sync(group_id)
        return groups.view(group_id)

    # ---------------------------------------------------------------------------------------------
    # history
    # ---------------------------------------------------------------------------------------------

    @_mapped
    async def history(
        self, to: int | str | None = None, limit: int = 100, before_ms: int | None = None
    ) -> list[MessageView]:
        history = self._parts().history
        conversation = conversation_of(to) if to is not None else None
        return await history.history(conversation, limit, before_ms)

    @_mapped
    async def message(self, message_id: str) -> MessageView | None:
        return await self._parts().history.message(message_id)

    @_mapped
    async def conversation_summaries(self) -> list[ConversationSummary]:
        """Every conversation with its last message and unread count, most recent first."""
        return await self._parts().history.summaries()

    @_mapped
    async def unread(self, to: int | str) -> int:
        return await self._parts().store.unread_count(conversation_of(to))

    @_mapped
    async def conversations(self) -> list[tuple[str, int]]:
        return await self._parts().history.conversations()

    # ---------------------------------------------------------------------------------------------
    # contacts, devices, trust
    # ---------------------------------------------------------------------------------------------

    @_mapped
    async def contacts(
        self, status: ContactStatus | str | None = None, group: str | None = None
    ) -> list[ContactOut]:
        result = await self._client.contacts(ContactStatus(status) if status else None, group)
        if self.state is PeerState.RUNNING and self._running is not None and status is None and group is None:
            await self._running.store.cache_contacts([c.model_dump(mode="json") for c in result])
            self.presence.seed(result)
        return result

    @_mapped
    async def contact_book(self) -> ContactBook:
        """Contacts, incoming and outgoing requests in two server calls (presence seeded from
        them); from the local cache, marked `cached`, when the server cannot be reached."""
        try:
            own = await self.contacts()
            incoming = await self._client.contact_requests("incoming")
        except ServerUnavailable:
            rows = [ContactOut.model_validate(r) for r in await self._parts().store.cached_contacts()]
            accepted = [
                c.model_copy(update={"online": self.presence.is_online(c.user_id)})
                for c in rows
                if c.status == ContactStatus.ACCEPTED
            ]
            outgoing = [c for c in rows if c.status == ContactStatus.PENDING]
            return ContactBook(accepted, [], outgoing, cached=True)
        accepted = [c for c in own if c.status == ContactStatus.ACCEPTED]
        outgoing = [
            c for c in own if c.status == ContactStatus.PENDING and c.direction == ContactDirection.OUTGOING
        ]
        return ContactBook(accepted, incoming, outgoing)

    @_mapped
    async def cached_contacts(self) -> list[dict[str, Any]]:
        return await self._parts().store.cached_contacts()

    @_mapped
    async def contact_requests(self) -> tuple[list[ContactOut], list[ContactOut]]:
        incoming = await self._client.contact_requests("incoming")
        outgoing = await self._client.contact_requests("outgoing")
        return incoming, outgoing

    @_mapped
    async def search(self, query: str) -> list[UserPublic]:
        return await self._client.search_users(query)

    @_mapped
    async def resolve_user(self, who: int | str) -> int:
        """A user id from an id or a username (exact match)."""
        if isinstance(who, int) or (isinstance(who, str) and who.isdigit()):
            return int(who)
        for user in await self._client.search_users(who, limit=50):
            if user.username.lower() == who.lower():
                return user.id
        raise UnknownContact(f"there is no user called {who!r}")

    @_mapped
    async def add_contact(self, who: int | str) -> ContactOut:
        if isinstance(who, int) or who.isdigit():
            return await self._client.add_contact(friend_id=int(who))
        return await self._client.add_contact(username=who)

    @_mapped
    async def accept_contact(self, user_id: int) -> ContactOut:
        return await self._client.accept_contact(user_id)

    @_mapped
    async def decline_contact(self, user_id: int) -> None:
        await self._client.decline_contact(user_id)

    @_mapped
    async def remove_contact(self, user_id: int) -> None:
        await self._client.remove_contact(user_id)

    @_mapped
    async def set_contact(self, user_id: int, **changes: str | None) -> ContactOut:
        return await self._client.update_contact(user_id, ContactUpdate(**changes))

    @_mapped
    async def devices(self, user_id: int | None = None) -> list[DeviceInfo]:
        keyring = self._parts().keyring
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

    @_mapped
    async def revoke_device(self, device_id: str) -> None:
        await self._client.revoke_device(device_id)

    @_mapped
    async def safety_number(self, user_id: int) -> SafetyNumber:
        keyring = self._parts().keyring
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

    @_mapped
    async def verify_contact(self, user_id: int) -> None:
        await self._parts().keyring.set_verified(user_id, True)

    @_mapped
    async def unverify_contact(self, user_id: int) -> None:
        await self._parts().keyring.set_verified(user_id, False)

    @_mapped
    async def is_verified(self, user_id: int) -> bool:
        return self._parts().keyring.is_verified(user_id)

    def key_warnings(self, user_id: int) -> list[KeyWarning]:
        """This contact's key warnings not yet settled (a new device, a changed key)."""
        return self._parts().keyring.warnings(user_id)

    def is_online(self, user_id: int) -> bool:
        """Presence as this peer last heard it (the one copy: `self.presence`)."""
        return self.presence.is_online(user_id)

    @_mapped
    async def accept_key_change(self, user_id: int) -> None:
        await self._parts().keyring.accept_change(user_id)

    # ---------------------------------------------------------------------------------------------
    # edit and delete (peer/edits.py), block (the server's; issue 15)
    # ---------------------------------------------------------------------------------------------

    @_mapped
    async def edit_message(self, message_id: str, body: str) -> MessageView:
        return await self._parts().inbox.edits.edit(message_id, body)

    @_mapped
    async def delete_message(self, message_id: str, *, for_everyone: bool) -> None:
        edits = self._parts().inbox.edits
        if for_everyone:
            await edits.delete_for_everyone(message_id)
        else:
            await edits.delete_for_me(message_id)

    @_mapped
    async def search_messages(
        self, query: str, to: int | str | None = None, limit: int = 50
    ) -> list[MessageView]:
        """My history's messages matching every word of `query` (prefixes), newest first; the
        index is in memory only, built from the store at the first search after unlock."""
        parts = self._parts()
        if self._search_index is None or self._search_index.store is not parts.store:
            self._search_index = SearchIndex(parts.store)
        conversation = conversation_of(to) if to is not None else None
        found = await self._search_index.search(query, conversation, limit)
        return [view for message_id in found if (view := await parts.history.message(message_id))]

    @_mapped
    async def set_timer(self, to: int | str, seconds: int) -> MessageView:
        """Set this conversation's disappearing-message timer (0: off), for both of us."""
        disappearing = self._parts().inbox.disappearing
        return await disappearing.set_timer(conversation_of(to), seconds, self.new_message_id())

    @_mapped
    async def timer(self, to: int | str) -> int:
        return await self._parts().inbox.disappearing.timer(conversation_of(to))

    @_mapped
    async def send_history(self, device_id: str) -> int:
        """Send my history to another device of mine over a direct link (confirmed by the caller
        on this, the old, device); the number of messages sent."""
        return await self._parts().inbox.history_transfer.send_to(device_id)

    @_mapped
    async def block(self, user_id: int) -> BlockOut:
        """Block someone (the server ends the contact and stops their requests, messages, signals
        and presence; its `blocked` push drops our links to them)."""
        return await self._client.block(user_id=user_id)

    @_mapped
    async def unblock(self, user_id: int) -> None:
        await self._client.unblock(user_id)

    @_mapped
    async def blocked(self) -> list[BlockOut]:
        return await self._client.blocks()

    # ---------------------------------------------------------------------------------------------
    # settings that can change while running
    # ---------------------------------------------------------------------------------------------

    def set_ratchet(self, enabled: bool) -> None:
        """Send 1:1 traffic as ratchet (PPR) messages where the device has prekeys (the default
        with `forward_secrecy`), or as envelope v2 from now on (benches compare the two; receiving
        either keeps working)."""
        running = self._running
        if running is not None and running.pairwise is not None:
            running.pairwise.enabled = enabled

    @_mapped
    async def set_direct(self, enabled: bool) -> None:
        """Allow or forbid direct links from now on (forbidding closes the open ones)."""
        self.settings = replace(self.settings, direct=enabled)
        running = self._running
        if running is not None and self.state is PeerState.RUNNING:
            running.router.policy = replace(running.router.policy, direct=enabled)
            running.outbox.direct = enabled
            running.groups.direct = enabled
            running.links.ignore_signals = not (enabled and self.settings.answer_offers)
            if not enabled:
                for link in running.links.links():
                    await running.links.drop(link.remote_device)

    # ---------------------------------------------------------------------------------------------
    # introspection (UI, tests, bench)
    # ---------------------------------------------------------------------------------------------

    def link_to(self, device_id: str) -> Link | None:
        return self._running.links.link(device_id) if self._running is not None else None

    @property
    def linkset(self) -> LinkSet:
        return self._parts().links

    @property
    def session(self) -> HubSession:
        return self._parts().session

    @property
    def keyring(self) -> Keyring:
        """Pinned keys, trust and key warnings (read-only use: the Peer's methods change them)."""
        return self._parts().keyring

    @property
    def router(self) -> Router:
        return self._parts().router

    @property
    def server(self) -> ServerClient:
        """The REST client of this peer's session (tests and tools read the server through it)."""
        return self._client
