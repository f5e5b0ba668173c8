"""POST /blobs, GET /blobs/{id}, DELETE /blobs/{id}: encrypted files when no direct link works.

The upload is the raw request body, streamed to disk (never held in memory) and stopped at the
size limit or the uploader's quota; `readers` names the users (accepted contacts) who may download
it, `expires_in` (a disappearing message's file) how soon it goes, never later than the server's
retention. Only the uploader and the readers can fetch it; to anyone else it does not exist (404). The
lifespan owns the periodic purge of expired blobs and of files left by deleted accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request, status
from fastapi.responses import FileResponse

from signalling.deps import CurrentUser
from signalling.errors import ApiError, Forbidden, NotFound, PayloadTooLarge
from signalling.openapi import errors
from signalling.protocol import GROUP_ID_PATTERN, MAX_BLOB_EXPIRES_IN, ApiErrorCode, BlobOut
from signalling.settings import Settings
from store import groups as group_store
from store import reach
from store.blobs import BlobNotFound, BlobQuotaExceeded, BlobStore, BlobTooLarge
from store.disk import StorageFull

log = logging.getLogger(__name__)
router = APIRouter(prefix="/blobs", tags=["blobs"])


class InsufficientStorage(ApiError):
    status_code = 507
    code = ApiErrorCode.STORAGE_FULL


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store = BlobStore(
        app.state.engine,
        settings.blob_dir,
        max_bytes=settings.blob_max_bytes,
        user_quota=settings.blob_quota_bytes_per_user,
        retention=timedelta(days=settings.blob_retention_days),
        account_quota=settings.account_quota_bytes,
        disk=app.state.disk,
    )
    app.state.blobs = store
    purger = asyncio.create_task(_purge_periodically(store, settings.mailbox_purge_interval_seconds))
    try:
        yield
    finally:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger


async def _purge_periodically(store: BlobStore, interval: float) -> None:
    while True:
        try:
            removed = await store.purge_expired()
            if removed:
                log.info("purged %d expired blobs", removed)
        except Exception:
            log.exception("blob purge failed; retrying at the next interval")
        await asyncio.sleep(interval)


# User ids (1 to 18 digits, so always within the store's 64-bit column) separated by commas.
READERS_PATTERN = r"^(?:[1-9][0-9]{0,17}(?:,[1-9][0-9]{0,17})*)?$"
MAX_READERS_CHARS = 4096


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BlobOut,
    summary="Upload an encrypted file (the raw body) for yourself and the named readers",
    openapi_extra={
        "requestBody": {
            "required": False,  # an empty body is an empty blob
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=errors(
        e403="A reader is not an accepted contact of yours nor in a group with you (`not_a_contact`).",
        e404="You are not a member of that group (`not_a_member`).",
        e413="Over the blob size limit (`too_large`) or your quota (`quota`).",
        e507="The server's disk is at its floor (`storage_full`).",
    ),
)
async def upload_blob(
    request: Request,
    user: CurrentUser,
    readers: Annotated[
        str,
        Query(
            pattern=READERS_PATTERN,
            max_length=MAX_READERS_CHARS,
            description="user ids who may download it, comma-separated, e.g. `2,5`",
        ),
    ] = "",
    group: Annotated[
        str | None,
        Query(pattern=GROUP_ID_PATTERN, description="a group of yours: every member may download it"),
    ] = None,
    expires_in: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_BLOB_EXPIRES_IN,
            description="a disappearing message's file: delete it this many seconds from now "
            "(at most the server's blob retention)",
        ),
    ] = None,
) -> BlobOut:
    store: BlobStore = request.app.state.blobs
    reader_ids = [int(part) for part in readers.split(",") if part]
    members: list[int] = []
    async with request.app.state.engine.connect() as conn:
        if group is not None:
            if await group_store.is_member(conn, group, user.id) is None:
                raise NotFound(
                    f"There is no group {group} that you are a member of.", code=ApiErrorCode.NOT_A_MEMBER
                )
            # Stored once, readable by every member (and so by each of their devices).
            members = await group_store.user_ids_of(conn, group)
        for reader in set(reader_ids) - {user.id} - set(members):
            if not (
                await reach.is_accepted_contact(conn, user.id, reader)
                or await group_store.share_a_group(conn, user.id, reader)
            ):
                raise Forbidden(
                    f"User {reader} is not an accepted contact of yours nor in a group with you.",
                    code=ApiErrorCode.NOT_A_CONTACT,
                )
    declared = request.headers.get("content-length")
    try:
        info = await store.put(
            user.id,
            [*reader_ids, *members],
            request.stream(),
            int(declared) if declared and declared.isdigit() else None,
            keep_for=timedelta(seconds=expires_in) if expires_in is not None else None,
        )
    except BlobTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from exc
    except BlobQuotaExceeded as exc:
        raise PayloadTooLarge(str(exc), code=ApiErrorCode.QUOTA) from exc
    except StorageFull as exc:
        raise InsufficientStorage(str(exc)) from exc
    return BlobOut(
        blob_id=info.blob_id,
        size=info.size,
        sha256=info.sha256,
        created_at=info.created_at,
        expires_at=info.expires_at,
    )


@router.get(
    "/{blob_id}",
    response_class=FileResponse,
    summary="Download a blob you uploaded or were named a reader of",
    responses={
        200: {
            "description": "The encrypted bytes as uploaded.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {"X-Blob-Sha256": {"description": "hex SHA-256", "schema": {"type": "string"}}},
        },
        **errors(e404="No blob with this id that you may read."),
    },
)
async def download_blob(request: Request, user: CurrentUser, blob_id: str) -> FileResponse:
    store: BlobStore = request.app.state.blobs
    try:
        info, path = await store.find_readable(user.id, blob_id)
    except BlobNotFound as exc:
        raise NotFound(str(exc)) from exc
    return FileResponse(path, media_type="application/octet-stream", headers={"X-Blob-Sha256": info.sha256})


@router.delete(
    "/{blob_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a blob you uploaded",
    responses=errors(e404="You have no blob with this id."),
)
async def delete_blob(request: Request, user: CurrentUser, blob_id: str) -> None:
    store: BlobStore = request.app.state.blobs
    try:
        await store.delete(user.id, blob_id)
    except BlobNotFound as exc:
        raise NotFound(f"You have no blob {blob_id}.") from exc
