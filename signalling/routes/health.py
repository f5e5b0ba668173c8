"""GET /health: the process is up, the database answers, and whether there is room to store.

It answers `{"status": "ok"}`, or `{"status": "degraded", "storage": "full", ...}` when the free
disk space under the data directory is below `PEERPOST_DISK_MIN_FREE_BYTES`: the server still
delivers live and serves reads, but refuses new mailbox rows and blobs (a load balancer should
keep it; an operator should free space).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from signalling.deps import Session
from signalling.errors import error_response
from store import accounts
from store.disk import DiskGuard

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness, database and storage check")
async def health(session: Session, request: Request) -> object:
    try:
        await accounts.ping(session)
    except SQLAlchemyError:
        return error_response(503, "The database does not answer.", "database_unavailable")
    disk: DiskGuard | None = getattr(request.app.state, "disk", None)
    full = disk.refusal() if disk is not None else None
    if full is not None:
        return {"status": "degraded", "storage": "full", "detail": str(full), "free_bytes": full.free}
    return {"status": "ok"}
