"""The published WebSocket contract equals the code: docs/asyncapi.json, the frame tables of
docs/hub.md and docs/protocol.md, and GET /asyncapi.json are all generated from signalling.protocol.

When one of these fails after a change to a frame: `python -m signalling.asyncapi`, then commit.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel

from signalling import asyncapi
from signalling.protocol import CLIENT_FRAME, SERVER_FRAME, CloseCode, ErrorCode
from tests.support.server import RunningServer

REGENERATE = "stale: run `python -m signalling.asyncapi` and commit the result"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    assert asyncapi.COMMITTED.read_text() == asyncapi.document_text(), REGENERATE


def test_the_docs_frame_tables_are_the_generated_ones() -> None:
    for doc in asyncapi.FRAME_TABLE_DOCS:
        text = doc.read_text()
        assert asyncapi.with_tables(text) == text, f"{doc.name}: {REGENERATE}"


def test_every_frame_is_a_message_with_every_field_and_type_required() -> None:
    document = asyncapi.build()
    assert document["asyncapi"] == "3.0.0"
    schemas = document["components"]["schemas"]
    for adapter, action in ((CLIENT_FRAME, "receive"), (SERVER_FRAME, "send")):
        frames = adapter.json_schema()["discriminator"]["mapping"]
        for name in frames:
            operation = document["operations"].get(f"{action}_{name}") or document["operations"].get(
                f"{action}_{name}_{action}"
            )
            assert operation is not None and operation["action"] == action, (action, name)
    for model in asyncapi.CLIENT_FRAMES + asyncapi.SERVER_FRAMES:
        schema = schemas[model.__name__]
        assert set(schema["properties"]) == set(model.model_fields), model.__name__
        assert "type" in schema["required"], model.__name__
    assert set(schemas["ErrorCode"]["enum"]) == {code.value for code in ErrorCode}
    assert set(document["x-close-codes"]) == {str(int(code)) for code in CloseCode}


def test_every_reference_in_the_document_resolves() -> None:
    document = asyncapi.build()
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        _resolve(document, ref)  # KeyError names the broken one


def test_every_field_of_every_frame_is_in_hub_md_and_protocol_md() -> None:
    for doc in asyncapi.FRAME_TABLE_DOCS:
        text = doc.read_text()
        for model in asyncapi.CLIENT_FRAMES + asyncapi.SERVER_FRAMES:
            table = text.split(f"**`{asyncapi.frame_type(model)}`**", 1)
            assert len(table) == 2, (doc.name, model.__name__)
            for field in model.model_fields:
                assert f"| `{field}` |" in table[1].split("**`", 1)[0], (doc.name, model.__name__, field)


def test_the_server_serves_the_same_document(tmp_path: Any) -> None:
    with RunningServer(tmp_path / "server") as server:
        served = httpx.get(server.url + "/asyncapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(asyncapi.document_text())


def test_frames_are_models_of_the_protocol_module() -> None:
    for model in asyncapi.CLIENT_FRAMES + asyncapi.SERVER_FRAMES:
        assert issubclass(model, BaseModel) and model.__module__ == "signalling.protocol"
