"""The server's error tree, and the one JSON shape every REST error takes.

Routes raise `ApiError` subclasses with a sentence for a person (`detail`) and a stable word for a
program (`code`); the handlers installed by `install_error_handlers` turn them, FastAPI's own
HTTPExceptions and request-validation failures into `{"detail": ..., "code": ...}`
(`signalling.protocol.ErrorBody`). The hub raises `Unauthorized` from `authenticate_token` too;
its own WebSocket-side failures (`HubError`) are at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from signalling.protocol import ErrorCode


class SignallingError(Exception):
    """Base of every error the signalling package raises on purpose."""


class ApiError(SignallingError):
    status_code = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class Invalid(ApiError):
    """A request that is well-formed JSON but asks for something impossible (422, like validation)."""

    status_code = 422
    code = "invalid"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, detail: str, *, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: float):
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
}

# Regex patterns are not words for a person: say what the pattern means instead.
_PATTERN_WORDS = {
    "username": "3 to 32 characters of A-Z, a-z, 0-9, '_', '.' or '-'",
    "device_id": "8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
    "message_id": "32 lowercase hex digits",
}


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One sentence naming each bad field and what is wrong with it."""
    parts: list[str] = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form", "header")]
        field = ".".join(loc) or "request"
        message = str(error.get("msg", "is invalid"))
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        if error.get("type") == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_WORDS:
            message = f"must be {_PATTERN_WORDS[loc[-1]]}"
        elif error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{field}: {message}")
    return "Invalid request: " + "; ".join(parts) + "."


def error_response(
    status: int, detail: str, code: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=dict(headers or {}))


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.detail, exc.code, exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, detail, _STATUS_CODES.get(exc.status_code, "error"), exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = {"detail": describe_validation_errors(exc.errors()), "code": "invalid"}
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


# The hub's own failures (WebSocket side). They are not ApiErrors: none of them reaches a REST
# client; the hub turns them into a close code (auth) or an `error` frame (a refused frame).


class HubError(Exception):
    """Base of the hub's own failures."""


class HubAuthError(HubError):
    """A socket could not be authenticated: closed with 4401 and this message as the reason."""


class FrameRefused(HubError):
    """A valid frame the hub will not act on: answered with an `error` frame, the socket stays up."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
