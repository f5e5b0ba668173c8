"""The server's error tree, and the one JSON shape every REST error takes.

Routes raise `ApiError` subclasses with a sentence for a person (`detail`), a stable word for a
program (`code`, a `signalling.protocol.ApiErrorCode`) and, when one field is at fault, its name
(`field`); the handlers installed by `install_error_handlers` turn them, FastAPI's own
HTTPExceptions and request-validation failures into `{"detail", "code", "field"}`
(`signalling.protocol.ErrorBody`), the one error shape the OpenAPI document declares. A 405 names
every method the path has in `Allow` (Starlette's own answer names only the first route's).
The hub raises `Unauthorized` from `authenticate_token` too; its own WebSocket-side failures
(`HubError`) are at the end. Everything here descends from `SignallingError`, the package's root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from signalling.protocol import (
    IDENTITY_KEY_BYTES,
    MAX_ENCRYPTION_KEY_BYTES,
    SIGNATURE_BYTES,
    ApiErrorCode,
    ErrorCode,
    b64_length,
)


class SignallingError(Exception):
    """Base of every error the signalling package raises on purpose."""


class ApiError(SignallingError):
    status_code = 500
    code = ApiErrorCode.INTERNAL

    def __init__(
        self,
        detail: str,
        *,
        code: ApiErrorCode | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.field = field
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status_code = 400
    code = ApiErrorCode.BAD_REQUEST


class Invalid(ApiError):
    """A request that is well-formed JSON but asks for something impossible (422, like validation)."""

    status_code = 422
    code = ApiErrorCode.INVALID


class Unauthorized(ApiError):
    status_code = 401
    code = ApiErrorCode.UNAUTHORIZED

    def __init__(
        self, detail: str, *, code: ApiErrorCode | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class Forbidden(ApiError):
    status_code = 403
    code = ApiErrorCode.FORBIDDEN


class NotFound(ApiError):
    status_code = 404
    code = ApiErrorCode.NOT_FOUND


class Conflict(ApiError):
    status_code = 409
    code = ApiErrorCode.CONFLICT


class PayloadTooLarge(ApiError):
    status_code = 413
    code = ApiErrorCode.TOO_LARGE


class TooManyRequests(ApiError):
    status_code = 429
    code = ApiErrorCode.RATE_LIMITED

    def __init__(self, detail: str, *, retry_after: float):
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


_STATUS_CODES = {
    400: ApiErrorCode.BAD_REQUEST,
    401: ApiErrorCode.UNAUTHORIZED,
    403: ApiErrorCode.FORBIDDEN,
    404: ApiErrorCode.NOT_FOUND,
    405: ApiErrorCode.METHOD_NOT_ALLOWED,
    409: ApiErrorCode.CONFLICT,
    413: ApiErrorCode.TOO_LARGE,
    422: ApiErrorCode.INVALID,
    429: ApiErrorCode.RATE_LIMITED,
}

# Regex patterns are not words for a person: say what the pattern means instead.
_PATTERN_WORDS = {
    "username": "3 to 32 characters of A-Z, a-z, 0-9, '_', '.' or '-'",
    "device_id": "8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
    "message_id": "32 lowercase hex digits",
}
_B64_FIELDS = {"envelope", "identity_key", "encryption_key", "signature"}
# Sizes of bytes fields, said in bytes (what the sender thinks in) as well as base64url characters.
_SIZE_WORDS = {
    "identity_key": f"must be {IDENTITY_KEY_BYTES} bytes (Ed25519): "
    f"{b64_length(IDENTITY_KEY_BYTES)} characters of unpadded base64url",
    "signature": f"must be {SIGNATURE_BYTES} bytes (Ed25519): "
    f"{b64_length(SIGNATURE_BYTES)} characters of unpadded base64url",
    "encryption_key": f"must be 1 to {MAX_ENCRYPTION_KEY_BYTES} bytes of DER: "
    f"2 to {b64_length(MAX_ENCRYPTION_KEY_BYTES)} characters of unpadded base64url",
}
_SIZE_ERRORS = {"string_too_short", "string_too_long"}
_LOCATIONS = ("body", "query", "path", "form", "header", "cookie")


def _field_of(error: Any) -> str | None:
    loc = [str(p) for p in error.get("loc", ()) if p not in _LOCATIONS]
    return ".".join(loc) or None


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One sentence naming each bad field and what is wrong with it."""
    parts: list[str] = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in _LOCATIONS]
        field = ".".join(loc) or "request"
        message = str(error.get("msg", "is invalid"))
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        if error.get("type") == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_WORDS:
            message = f"must be {_PATTERN_WORDS[loc[-1]]}"
        elif error.get("type") == "string_pattern_mismatch" and loc and loc[-1] in _B64_FIELDS:
            message = "must be unpadded base64url (A-Z a-z 0-9 - _, no '=', length not 1 mod 4)"
        elif error.get("type") in _SIZE_ERRORS and loc and loc[-1] in _SIZE_WORDS:
            message = f"{_SIZE_WORDS[loc[-1]]}, got {len(str(error.get('input', '')))} characters"
        elif error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{field}: {message}")
    return "Invalid request: " + "; ".join(parts) + "."


def error_response(
    status: int,
    detail: str,
    code: ApiErrorCode,
    headers: Mapping[str, str] | None = None,
    field: str | None = None,
) -> JSONResponse:
    body: dict[str, str] = {"detail": detail, "code": code.value}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_NO_METHOD = "(no method)"  # no route serves it: a route whose path matches answers PARTIAL


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at this request's path (HEAD with GET).

    `app.state.http_routes` is the flat list of the app's HTTP routes (signalling/app.py)."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "http_routes", ()):
        match, _ = route.matches({**request.scope, "method": _NO_METHOD})
        if match is Match.PARTIAL:
            methods |= set(route.methods or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.detail, exc.code, exc.headers, exc.field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        methods = allowed_methods(request)
        headers["Allow"] = ", ".join(methods)
        detail = f"{request.method} is not allowed here; this path takes {', '.join(methods)}."
    code = _STATUS_CODES.get(exc.status_code, ApiErrorCode.INTERNAL)
    return error_response(exc.status_code, detail, code, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    field = _field_of(errors[0]) if errors else None
    return error_response(422, describe_validation_errors(errors), ApiErrorCode.INVALID, field=field)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


# The hub's own failures (WebSocket side). They are not ApiErrors: none of them reaches a REST
# client; the hub turns them into a close code (auth) or an `error` frame (a refused frame).


class HubError(SignallingError):
    """Base of the hub's own failures."""


class HubAuthError(HubError):
    """A socket could not be authenticated: closed with `close_code` and this message as the reason."""

    def __init__(self, message: str, close_code: int = 4401) -> None:
        super().__init__(message)
        self.close_code = close_code


class FrameRefused(HubError):
    """A valid frame the hub will not act on: answered with an `error` frame, the socket stays up.

    As Synapse's SynapseError carries `additional_fields`, this carries the frame's typed extras:
    `device_id` names the device at fault, so a client needs not parse the message."""

    def __init__(self, code: ErrorCode, message: str, *, device_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.device_id = device_id
