"""The OpenAPI document, exact: every answer an operation can give is declared with its real body.

FastAPI's generated document declares a 422 with its own `HTTPValidationError` (an array of
errors) and nothing of the errors our handlers send. `exact_openapi(app)` starts from FastAPI's
document and makes it say what the server does (signalling/errors.py):

- every error status uses the one `ErrorBody` (`detail`, `code` from `ApiErrorCode`, `field`);
- an operation behind the bearer token declares 401, one with a body declares 400 (a body that does
  not parse) and 422, one with parameters 422;
- route-specific statuses come from each route's `responses=errors(...)`.

Constraints live in the models (`signalling.protocol`) and parameters (`signalling.deps`), so the
schema states them too. `tests/server/test_openapi_contract.py` runs schemathesis against a live
server to keep all of this true.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from signalling.protocol import MAX_INT64, ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

GENERIC_WORDS = {
    400: "The body could not be parsed (not JSON, or not the form it should be).",
    401: "No valid bearer token: missing, malformed, expired, revoked, or the account is gone.",
    403: "Not allowed.",
    404: "Not found.",
    409: "Conflicts with what exists.",
    413: "Too large.",
    422: "A field is invalid: `field` names it, `detail` says why.",
    429: "Too many attempts: wait for the seconds in Retry-After.",
    503: "A service the server needs does not answer.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "always `Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
}


def errors(**why: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: `errors(e404="no such user")` declares a 404 with ErrorBody."""
    out: dict[int | str, dict[str, Any]] = {}
    for key, words in why.items():
        status = int(key.removeprefix("e"))
        out[status] = {"model": ErrorBody, "description": words}
    return out


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or GENERIC_WORDS.get(status, "Error."),
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _complete(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    needed: list[int] = []
    if operation.get("security"):
        needed.append(401)
    if "requestBody" in operation:
        needed += [400, 422]
    if operation.get("parameters"):
        needed.append(422)
    for status in needed:
        key = str(status)
        if key not in responses:
            responses[key] = _error_response(status)
    for key, response in responses.items():
        if not key.isdigit() or int(key) < 400:
            continue
        status = int(key)
        generic = response.get("description") in (None, "", "Validation Error", "Unprocessable Content")
        response.update(_error_response(status, None if generic else response["description"]))


# OpenAPI links: what an answer's fields are good for next (clients and stateful fuzzers follow
# them). (operation, status) -> {link name: (target path, method, parameters, request body)}.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str], dict[str, str] | None]]] = {
    ("/users/", "post", "201"): {
        "ReadUser": ("/users/{user_id}", "get", {"user_id": "$response.body#/id"}, None),
        "ListDevices": ("/users/{user_id}/devices", "get", {"user_id": "$response.body#/id"}, None),
        "AskToBeContacts": ("/me/contacts/", "post", {}, {"friend_id": "$response.body#/id"}),
    },
    ("/me/contacts/", "post", "201"): {
        "Accept": ("/me/contacts/{user_id}/accept", "post", {"user_id": "$response.body#/user_id"}, None),
        "Decline": ("/me/contacts/{user_id}/decline", "post", {"user_id": "$response.body#/user_id"}, None),
        "Label": ("/me/contacts/{user_id}", "patch", {"user_id": "$response.body#/user_id"}, None),
        "Remove": ("/me/contacts/{user_id}", "delete", {"user_id": "$response.body#/user_id"}, None),
    },
    ("/me/devices", "post", "201"): {
        "FetchMailbox": ("/me/mailbox", "get", {"device_id": "$response.body#/device_id"}, None),
        "Revoke": ("/me/devices/{device_id}", "delete", {"device_id": "$response.body#/device_id"}, None),
    },
    ("/blobs", "post", "201"): {
        "Download": ("/blobs/{blob_id}", "get", {"blob_id": "$response.body#/blob_id"}, None),
        "Delete": ("/blobs/{blob_id}", "delete", {"blob_id": "$response.body#/blob_id"}, None),
    },
}


def _add_links(document: dict[str, Any]) -> None:
    paths = document.get("paths", {})
    for (path, method, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        out = response.setdefault("links", {})
        for name, (target, target_method, parameters, body) in links.items():
            operation = paths.get(target, {}).get(target_method)
            if operation is None:
                continue
            link: dict[str, Any] = {"operationId": operation["operationId"]}
            if parameters:
                link["parameters"] = parameters
            if body is not None:
                link["requestBody"] = body
            out[name] = link


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _integer_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model types bounds as floats: 2**63 - 1 comes out as 2**63, which the server
    refuses. Give integer bounds back their exact integer value."""
    if isinstance(node, list):
        for item in node:
            _integer_bounds(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                node[key] = MAX_INT64 if value == float(MAX_INT64) else int(value)
            else:
                _integer_bounds(value)


def exact_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document as the server really behaves (cached on the app, as FastAPI does)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and "responses" in operation:
                _complete(operation)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if "ErrorBody" not in schemas:
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas["ErrorBody"].pop("$defs", {}))
    _integer_bounds(document)
    _add_links(document)
    app.openapi_schema = document
    return document


def install(app: FastAPI) -> None:
    app.openapi = lambda: exact_openapi(app)  # type: ignore[method-assign]
