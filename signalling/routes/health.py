"""GET /health: the process is up and the database answers."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from signalling.deps import Session
from signalling.errors import error_response
from store import accounts

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness and database check")
async def health(session: Session) -> object:
    try:
        await accounts.ping(session)
    except SQLAlchemyError:
        return error_response(503, "The database does not answer.", "database_unavailable")
    return {"status": "ok"}
