"""GET /asyncapi.json: the WebSocket frame protocol as an AsyncAPI 3 document (signalling.asyncapi).

The REST contract is FastAPI's /openapi.json (made exact by signalling.openapi); this is its twin
for /ws, so a client can be written from the two documents alone.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from signalling import asyncapi

router = APIRouter(tags=["contract"])


@cache
def _document() -> dict[str, Any]:
    return asyncapi.build()


@router.get(
    "/asyncapi.json",
    summary="The WebSocket protocol (/ws) as an AsyncAPI 3.0 document",
    response_class=JSONResponse,
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def asyncapi_document() -> JSONResponse:
    return JSONResponse(_document())
