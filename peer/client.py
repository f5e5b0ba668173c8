"""The peer's REST client for the signalling server (httpx).

It speaks only `signalling.protocol` shapes, keeps the token pair, refreshes the access token once
on a 401 and retries, and turns every failure into a `peer.errors.ServerError` whose message is the
server's own sentence. It never imports the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from peer.errors import AuthFailed, ConfigError, ServerError, ServerUnavailable
from signalling.protocol import (
    BlobOut,
    BlockAdd,
    BlockOut,
    ContactAdd,
    ContactOut,
    ContactStatus,
    ContactUpdate,
    DeviceBundleIn,
    DeviceOut,
    DeviceRename,
    GroupChange,
    GroupCreate,
    GroupMemberOut,
    GroupMembersChange,
    GroupOut,
    GroupPromote,
    GroupRecordOut,
    GroupRename,
    IceConfig,
    MailboxItem,
    PrekeyBundleOut,
    PrekeyClaimIn,
    PrekeysIn,
    PrekeyStockOut,
    RecipientDevice,
    RefreshRequest,
    TokenPair,
    UserCreate,
    UserMe,
    UserOut,
    UserPublic,
    UserUpdate,
    b64decode,
    b64encode,
)

M = TypeVar("M", bound=BaseModel)


def normalise_server_url(url: str) -> str:
    """Check a server URL early so a typo is one clear error, not a connection stack trace."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"server URL {url!r} must look like http://host:port")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def ws_url(server_url: str) -> str:
    parts = urlsplit(server_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


class ServerClient:
    """REST calls of one logged-in (or logging-in) session. Use as `async with`."""

    def __init__(
        self,
        server_url: str,
        *,
        timeout: float = 15.0,
        tokens: TokenPair | None = None,
        on_tokens: Callable[[TokenPair | None], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = normalise_server_url(server_url)
        self.tokens = tokens
        self.on_tokens = on_tokens  # called with every new token pair (the Peer seals them to disk)
        self._http = httpx.AsyncClient(
            base_url=self.server_url, timeout=timeout, trust_env=False, transport=transport
        )
        self._refresh_lock = asyncio.Lock()

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def access_token(self) -> str | None:
        return self.tokens.access_token if self.tokens else None

    def _set_tokens(self, tokens: TokenPair | None) -> None:
        self.tokens = tokens
        if self.on_tokens is not None:
            self.on_tokens(tokens)

    # ---------------------------------------------------------------------------------------------
    # plumbing
    # ---------------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if auth and self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens.access_token}"
        try:
            return await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as e:
            raise ServerUnavailable(f"the server at {self.server_url} did not answer in time") from e
        except httpx.TransportError as e:
            raise ServerUnavailable(f"cannot reach the server at {self.server_url}: {e}") from e

    async def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        """One call; on a 401 refresh the access token once and retry. Raises ServerError on >= 400."""
        used = self.access_token
        response = await self._send(method, path, auth=auth, **kwargs)
        if response.status_code == 401 and auth and self.tokens and self.tokens.refresh_token:
            await self.refresh(stale=used)
            response = await self._send(method, path, auth=auth, **kwargs)
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> ServerError:
        detail, code = None, None
        try:
            body = response.json()
            detail, code = body.get("detail"), body.get("code")
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}"
                    for item in detail
                )
        except (ValueError, AttributeError):
            pass
        message = str(detail) if detail else f"the server answered {response.status_code}"
        cls = AuthFailed if response.status_code == 401 else ServerError
        return cls(message, code=code, status=response.status_code)

    @staticmethod
    def _parse(model: type[M] | TypeAdapter, response: httpx.Response):
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_json(response.content)
            return model.model_validate_json(response.content)
        except ValidationError as e:
            raise ServerError(f"the server sent an answer this peer does not understand: {e}") from e

    async def _json(self, model, method: str, path: str, **kwargs: Any):
        return self._parse(model, await self.request(method, path, **kwargs))

    # ---------------------------------------------------------------------------------------------
    # accounts and tokens
    # ---------------------------------------------------------------------------------------------

    async def register(self, username: str, email: str, password: str) -> UserOut:
        body = UserCreate(username=username, email=email, password=password)
        return await self._json(UserOut, "POST", "/users/", json=body.model_dump(mode="json"), auth=False)

    async def login(self, username: str, password: str, device_id: str | None = None) -> TokenPair:
        """Log in; naming `device_id` makes the tokens this device's (revoking it ends them)."""
        form = {"username": username, "password": password}
        if device_id is not None:
            form["device_id"] = device_id
        response = await self._send("POST", "/token", auth=False, data=form)
        if response.status_code >= 400:
            error = self._error(response)
            if response.status_code in (400, 401):
                raise AuthFailed(str(error), code=error.code, status=error.status)
            raise error
        tokens = self._parse(TokenPair, response)
        self._set_tokens(tokens)
        return tokens

    async def login_again(self, username: str, password: str, device_id: str | None = None) -> TokenPair:
        """Log in while no refresh is in flight: a refresh that fails with a revoked token clears
        the tokens, and must not clear the fresh pair (after a password change)."""
        async with self._refresh_lock:
            return await self.login(username, password, device_id)

    async def refresh(self, stale: str | None = None) -> TokenPair:
        async with self._refresh_lock:
            if self.tokens is None or not self.tokens.refresh_token:
                raise AuthFailed("the session expired; log in again")
            if stale is not None and self.tokens.access_token != stale:
                return self.tokens  # another call refreshed while we waited
            body = RefreshRequest(refresh_token=self.tokens.refresh_token)
            response = await self._send("POST", "/token/refresh", auth=False, json=body.model_dump())
            if response.status_code >= 400:
                self._set_tokens(None)
                raise AuthFailed("the session expired; log in again", status=response.status_code)
            tokens = self._parse(TokenPair, response)
            if tokens.refresh_token is None:
                tokens = tokens.model_copy(update={"refresh_token": self.tokens.refresh_token})
            self._set_tokens(tokens)
            return tokens

    async def logout(self) -> None:
        try:
            await self.request("POST", "/logout")
        finally:
            self._set_tokens(None)

    async def me(self) -> UserMe:
        return await self._json(UserMe, "GET", "/users/me")

    async def update_me(self, update: UserUpdate) -> UserMe:
        return await self._json(UserMe, "PATCH", "/users/me", json=update.model_dump(exclude_none=True))

    async def delete_account(self) -> None:
        await self.request("DELETE", "/users/self")
        self._set_tokens(None)

    async def search_users(self, query: str, skip: int = 0, limit: int = 20) -> list[UserPublic]:
        params = {"q": query, "skip": skip, "limit": limit}
        return await self._json(TypeAdapter(list[UserPublic]), "GET", "/users/search", params=params)

    async def get_user(self, user_id: int) -> UserPublic:
        return await self._json(UserPublic, "GET", f"/users/{user_id}")

    # ---------------------------------------------------------------------------------------------
    # contacts
    # ---------------------------------------------------------------------------------------------

    async def add_contact(self, *, friend_id: int | None = None, username: str | None = None) -> ContactOut:
        body = ContactAdd(friend_id=friend_id, username=username)
        return await self._json(ContactOut, "POST", "/me/contacts/", json=body.model_dump(exclude_none=True))

    async def contacts(
        self,
        status: ContactStatus | None = None,
        group: str | None = None,
        skip: int = 0,
        limit: int = 100,
    ) -> list[ContactOut]:
        params: dict[str, Any] = {"skip": skip, "limit": limit}
        if status is not None:
            params["status"] = str(status)
        if group is not None:
            params["group"] = group
        return await self._json(TypeAdapter(list[ContactOut]), "GET", "/me/contacts/", params=params)

    async def contact_requests(self, direction: str) -> list[ContactOut]:
        return await self._json(TypeAdapter(list[ContactOut]), "GET", f"/me/contacts/requests/{direction}")

    async def accept_contact(self, user_id: int) -> ContactOut:
        return await self._json(ContactOut, "POST", f"/me/contacts/{user_id}/accept")

    async def decline_contact(self, user_id: int) -> None:
        await self.request("POST", f"/me/contacts/{user_id}/decline")

    async def update_contact(self, user_id: int, update: ContactUpdate) -> ContactOut:
        body = update.model_dump(exclude_unset=True)
        return await self._json(ContactOut, "PATCH", f"/me/contacts/{user_id}", json=body)

    async def remove_contact(self, user_id: int) -> None:
        await self.request("DELETE", f"/me/contacts/{user_id}")

    async def block(self, *, user_id: int | None = None, username: str | None = None) -> BlockOut:
        """Block someone: ends the contact; their requests, messages, signals and presence stop."""
        body = BlockAdd(user_id=user_id, username=username)
        return await self._json(BlockOut, "POST", "/me/blocks", json=body.model_dump(exclude_none=True))

    async def unblock(self, user_id: int) -> None:
        await self.request("DELETE", f"/me/blocks/{user_id}")

    async def blocks(self, skip: int = 0, limit: int = 100) -> list[BlockOut]:
        params = {"skip": skip, "limit": limit}
        return await self._json(TypeAdapter(list[BlockOut]), "GET", "/me/blocks", params=params)

    # ---------------------------------------------------------------------------------------------
    # devices, ICE, mailbox, blobs
    # ---------------------------------------------------------------------------------------------

    async def publish_device(self, bundle: DeviceBundleIn) -> DeviceOut:
        return await self._json(DeviceOut, "POST", "/me/devices", json=bundle.model_dump())

    async def devices(self, user_id: int) -> list[DeviceOut]:
        return await self._json(TypeAdapter(list[DeviceOut]), "GET", f"/users/{user_id}/devices")

    async def revoke_device(self, device_id: str) -> None:
        await self.request("DELETE", f"/me/devices/{device_id}")

    async def publish_prekeys(self, device_id: str, prekeys: PrekeysIn) -> PrekeyStockOut:
        """Publish or refill this device's prekeys; the answer is the stock the server now holds."""
        return await self._json(
            PrekeyStockOut, "POST", f"/me/devices/{device_id}/prekeys", json=prekeys.model_dump(mode="json")
        )

    async def prekey_stock(self, device_id: str) -> PrekeyStockOut:
        return await self._json(PrekeyStockOut, "GET", f"/me/devices/{device_id}/prekeys")

    async def claim_prekey_bundles(
        self, user_id: int, device_ids: list[str] | None = None
    ) -> list[PrekeyBundleOut]:
        """One bundle per (named) active device of `user_id` that has prekeys; uses up one-time keys."""
        body = PrekeyClaimIn(device_ids=device_ids)
        return await self._json(
            TypeAdapter(list[PrekeyBundleOut]),
            "POST",
            f"/users/{user_id}/prekey-bundles",
            json=body.model_dump(),
        )

    async def rename_device(self, device_id: str, name: str | None) -> DeviceOut:
        body = DeviceRename(name=name).model_dump()
        return await self._json(DeviceOut, "PATCH", f"/me/devices/{device_id}", json=body)

    async def ice(self) -> IceConfig:
        return await self._json(IceConfig, "GET", "/ice")

    async def mailbox(self, device_id: str) -> list[MailboxItem]:
        params = {"device_id": device_id}
        return await self._json(TypeAdapter(list[MailboxItem]), "GET", "/me/mailbox", params=params)

    async def upload_blob(
        self,
        chunks: AsyncIterator[bytes],
        readers: Iterable[int],
        *,
        group_id: str | None = None,
        expires_in: int | None = None,
    ) -> BlobOut:
        """Upload an encrypted file; with `group_id` every member of that group may read it; with
        `expires_in` (a disappearing message's file) the server deletes it that many seconds on."""
        params = {"readers": ",".join(str(r) for r in readers)}
        if group_id is not None:
            params["group"] = group_id
        if expires_in is not None:
            params["expires_in"] = str(expires_in)
        headers = {"Content-Type": "application/octet-stream"}
        return await self._json(BlobOut, "POST", "/blobs", params=params, content=chunks, headers=headers)

    async def download_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        """Stream a blob's bytes; the caller iterates (re-chunking is the caller's job)."""
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.tokens else {}
        try:
            async with self._http.stream("GET", f"/blobs/{blob_id}", headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response)
                async for piece in response.aiter_bytes(1 << 20):
                    yield piece
        except httpx.TransportError as e:
            raise ServerUnavailable(f"blob download from {self.server_url} broke off: {e}") from e

    async def delete_blob(self, blob_id: str) -> None:
        await self.request("DELETE", f"/blobs/{blob_id}")

    # ---------------------------------------------------------------------------------------------
    # groups (every change carries a record signed on this device: crypto.groupstate.sign_record,
    # and `version` = the number of records this device verified; 409 `stale_version` = re-sign)
    # ---------------------------------------------------------------------------------------------

    async def create_group(self, group_id: str, name: str, members: Iterable[int], record: bytes) -> GroupOut:
        body = GroupCreate(group_id=group_id, name=name, members=list(members), record=b64encode(record))
        return await self._json(GroupOut, "POST", "/groups", json=body.model_dump())

    async def groups(self, skip: int = 0, limit: int = 100) -> list[GroupOut]:
        params = {"skip": skip, "limit": limit}
        return await self._json(TypeAdapter(list[GroupOut]), "GET", "/groups", params=params)

    async def group(self, group_id: str) -> GroupOut:
        return await self._json(GroupOut, "GET", f"/groups/{group_id}")

    async def group_members(self, group_id: str, skip: int = 0, limit: int = 500) -> list[GroupMemberOut]:
        params = {"skip": skip, "limit": limit}
        return await self._json(
            TypeAdapter(list[GroupMemberOut]), "GET", f"/groups/{group_id}/members", params=params
        )

    async def all_group_members(self, group_id: str) -> list[GroupMemberOut]:
        """Every member, page by page (a 1,000-member group is two pages)."""
        members: list[GroupMemberOut] = []
        while True:
            page = await self.group_members(group_id, skip=len(members))
            members += page
            if len(page) < 500:
                return members

    async def group_records(self, group_id: str, after: int = -1) -> list[bytes]:
        """Every membership record after seq `after`, in chain order (verify them before use)."""
        records: list[bytes] = []
        while True:
            params = {"after": after + len(records), "limit": 500}
            page = await self._json(
                TypeAdapter(list[GroupRecordOut]), "GET", f"/groups/{group_id}/records", params=params
            )
            records += [b64decode(r.record) for r in page]
            if len(page) < 500:
                return records

    async def group_devices(self, group_id: str) -> list[RecipientDevice]:
        """Every active device of every member (this device's own included)."""
        devices: list[RecipientDevice] = []
        while True:
            params: dict[str, Any] = {"after": devices[-1].device_id if devices else "", "limit": 500}
            page = await self._json(
                TypeAdapter(list[RecipientDevice]), "GET", f"/groups/{group_id}/devices", params=params
            )
            devices += page
            if len(page) < 500:
                return devices

    async def rename_group(self, group_id: str, name: str, record: bytes, version: int) -> GroupOut:
        body = GroupRename(name=name, record=b64encode(record), version=version)
        return await self._json(GroupOut, "PATCH", f"/groups/{group_id}", json=body.model_dump())

    async def add_group_members(
        self, group_id: str, user_ids: Iterable[int], record: bytes, version: int
    ) -> GroupOut:
        body = GroupMembersChange(user_ids=list(user_ids), record=b64encode(record), version=version)
        return await self._json(GroupOut, "POST", f"/groups/{group_id}/members", json=body.model_dump())

    async def remove_group_members(
        self, group_id: str, user_ids: Iterable[int], record: bytes, version: int
    ) -> GroupOut:
        body = GroupMembersChange(user_ids=list(user_ids), record=b64encode(record), version=version)
        return await self._json(
            GroupOut, "POST", f"/groups/{group_id}/members/remove", json=body.model_dump()
        )

    async def promote_group_member(
        self, group_id: str, user_id: int, record: bytes, version: int
    ) -> GroupOut:
        body = GroupPromote(user_id=user_id, record=b64encode(record), version=version)
        return await self._json(GroupOut, "POST", f"/groups/{group_id}/admins", json=body.model_dump())

    async def leave_group(self, group_id: str, record: bytes, version: int) -> None:
        body = GroupChange(record=b64encode(record), version=version)
        await self.request("POST", f"/groups/{group_id}/leave", json=body.model_dump())

    async def delete_group(self, group_id: str) -> None:
        await self.request("DELETE", f"/groups/{group_id}")
