"""The published OpenAPI document is exact: what an outside implementer reads is what the server does.

The main check is schemathesis, run as an outsider would (its CLI, every default check, all phases:
coverage, fuzzing, stateful) against a real server, authenticated as a real user
(tests/server/schemathesis_hooks.py). Examples are bounded and the seed fixed, so the run is short
and repeatable; a failure prints schemathesis' own report with a curl line to reproduce it.
The smaller tests pin the parts of the contract found broken before (issue 11 #14, issue 12).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from signalling.protocol import MAX_INT64, ApiErrorCode, ErrorBody, b64encode
from tests.support.server import RunningServer

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
SCHEMATHESIS_EXAMPLES = 15  # per operation and phase: ~25 s on this box, every operation reached
SCHEMATHESIS_SEED = 20261201


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with RunningServer(tmp_path_factory.mktemp("contract")) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def _token(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    await http.post("/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD})
    login = await http.post("/token", data={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def test_schemathesis_finds_nothing_with_every_default_check(server: RunningServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PEERPOST_FUZZ_URL": server.url,
        "PEERPOST_FUZZ_USER": "fuzzer",
        "SCHEMATHESIS_HOOKS": "tests.server.schemathesis_hooks",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.url}/openapi.json",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--seed",
        str(SCHEMATHESIS_SEED),
        "--workers",
        "1",
        "--no-color",
        "--request-timeout",
        "30",
    ]
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert " passed" in report, report


async def test_integers_past_64_bits_are_422_naming_the_field(http: httpx.AsyncClient) -> None:
    auth = await _token(http, "bigints")
    huge = 2**63
    cases = [
        ("GET", f"/me/contacts/?skip={huge}", None, "skip"),
        ("GET", f"/users/search?q=a&skip={huge}", None, "skip"),
        ("GET", f"/users/{huge}", None, "user_id"),
        ("GET", f"/users/{huge}/devices", None, "user_id"),
        ("POST", f"/me/contacts/{huge}/accept", None, "user_id"),
        ("DELETE", f"/me/contacts/{huge}", None, "user_id"),
        ("POST", "/me/contacts/", {"friend_id": huge}, "friend_id"),
        ("POST", f"/blobs?readers={huge}", None, "readers"),
    ]
    for method, url, body, field in cases:
        response = await http.request(method, url, json=body, headers=auth)
        assert response.status_code == 422, (url, response.text)
        error = ErrorBody.model_validate(response.json())
        assert (error.code, error.field) == (ApiErrorCode.INVALID, field), (url, error)
    at_the_limit = await http.get(f"/users/{MAX_INT64}", headers=auth)
    assert at_the_limit.status_code == 404  # the largest id the store can hold is a fair question


async def test_a_bundle_key_of_length_1_mod_4_or_a_huge_created_at_is_422_naming_it(
    http: httpx.AsyncClient,
) -> None:
    auth = await _token(http, "badbundle")
    good = {
        "device_id": "contract-device-1",
        "identity_key": b64encode(b"i" * 32),
        "encryption_key": b64encode(b"e" * 550),
        "created_at": 1_767_225_600,
        "signature": b64encode(b"s" * 64),
    }
    for field, value in [("encryption_key", "A" * 733), ("created_at", 2**63), ("created_at", 10**30)]:
        response = await http.post("/me/devices", json={**good, field: value}, headers=auth)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
    assert (await http.post("/me/devices", json=good, headers=auth)).status_code == 201


async def test_a_wrong_method_is_405_naming_every_method_of_the_path(http: httpx.AsyncClient) -> None:
    response = await http.put("/me/contacts/")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert ErrorBody.model_validate(response.json()).code == ApiErrorCode.METHOD_NOT_ALLOWED
    assert "GET, HEAD, POST" in response.json()["detail"]
    assert (await http.get("/users/self")).headers["allow"] == "DELETE"


async def test_the_document_declares_one_error_shape_and_no_framework_leftovers(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"detail", "code", "field"}
    codes = set(schemas["ApiErrorCode"]["enum"])
    assert codes == {code.value for code in ApiErrorCode}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if operation.get("security"):
                assert "401" in operation["responses"], (method, path)
