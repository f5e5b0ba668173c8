"""GET /health: the process is up, the database answers, and whether there is room to store.

It answers `{"status": "ok"}`, or `{"status": "degraded", "storage": "full", ...}` when the free
disk space under the data directory is below `PEERPOST_DISK_MIN_FREE_BYTES`: the server still
delivers live and serves reads, but refuses new mailbox rows and blobs (a load balancer should
keep it; an operator should free space).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from signalling.deps import Session
from signalling.errors import error_response
from signalling.openapi import errors
from signalling.protocol import ApiErrorCode
from store import accounts
from store.disk import DiskGuard

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"] = "ok"
    storage: Literal["full"] | None = Field(default=None, description="set when the disk is at its floor")
    detail: str | None = None
    free_bytes: int | None = None


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Liveness, database and storage check",
    responses=errors(e503="The database does not answer (`database_unavailable`)."),
)
async def health(session: Session, request: Request) -> Health | JSONResponse:
    try:
        await accounts.ping(session)
    except SQLAlchemyError:
        return error_response(503, "The database does not answer.", ApiErrorCode.DATABASE_UNAVAILABLE)
    disk: DiskGuard | None = getattr(request.app.state, "disk", None)
    full = disk.refusal() if disk is not None else None
    if full is not None:
        return Health(status="degraded", storage="full", detail=str(full), free_bytes=full.free)
    return Health()
