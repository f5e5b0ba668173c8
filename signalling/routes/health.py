"""GET /health: the process is up and the database answers."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from signalling.deps import Session
from signalling.errors import error_response
from signalling.openapi import errors
from signalling.protocol import ApiErrorCode
from store import accounts

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get(
    "/health",
    response_model=Health,
    summary="Liveness and database check",
    responses=errors(e503="The database does not answer (`database_unavailable`)."),
)
async def health(session: Session) -> Health | JSONResponse:
    try:
        await accounts.ping(session)
    except SQLAlchemyError:
        return error_response(503, "The database does not answer.", ApiErrorCode.DATABASE_UNAVAILABLE)
    return Health()
