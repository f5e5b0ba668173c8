"""The HTTP edge under abuse, through a real server: slow headers, connection floods, huge bodies,
the data directory's modes and the security headers (issue #11, findings 5, 6, 20, 21)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import RunningServer

GUARDED_ENV = {
    "PEERPOST_HTTP_HEADER_TIMEOUT_SECONDS": "1",
    "PEERPOST_HTTP_BODY_TIMEOUT_SECONDS": "1",
    "PEERPOST_MAX_CONNECTIONS_PER_ADDRESS": "20",
    "PEERPOST_BODY_MAX_BYTES_UNAUTHENTICATED": "16384",
    "PEERPOST_BODY_MAX_BYTES": "65536",
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[RunningServer]:
    with RunningServer(env=GUARDED_ENV) as running:
        yield running


def _connect(server: RunningServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0))
    return sock


def _read_all(sock: socket.socket, deadline: float = 10.0) -> bytes:
    sock.settimeout(deadline)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_half_sent_headers_are_answered_408_and_closed(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"timeout"' in answer


def test_a_body_that_stops_arriving_is_answered_408(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    sock.sendall(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 100\r\n\r\nusername=a"  # and the other 90 bytes never
    )
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_silent_connection_is_closed_by_the_header_deadline(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    answer = _read_all(sock)  # returns when the server closes
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408")


def test_oversized_headers_are_refused(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000)
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_a_connection_flood_from_one_address_is_refused_and_others_are_served(
    guarded: RunningServer,
) -> None:
    held = [_connect(guarded, "127.0.0.2") for _ in range(20)]
    for sock in held:
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # slowloris: headers never finished
    try:
        extra = _connect(guarded, "127.0.0.2")
        answer = _read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"too_many_connections" in answer
        # Another address is served while the flood holds its connections.
        assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_a_huge_declared_body_is_refused_before_it_is_read(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    sock.sendall(
        b"POST /users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 209715200\r\n\r\n" + b"{" * 1000
    )
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"too_large"' in answer


def test_a_chunked_body_is_cut_off_at_the_route_limit(guarded: RunningServer) -> None:
    sock = _connect(guarded)
    sock.sendall(
        b"POST /users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 8192
    sent = 0
    sock.settimeout(0.2)
    answer = b""
    # Keep sending until the server answers; it must do so after about the 16 KiB limit.
    while sent < 50 * 1024 * 1024 and not answer:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        with contextlib.suppress(TimeoutError, BlockingIOError):
            answer = sock.recv(65536)
    answer += _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 10 * 1024 * 1024  # refused long before 200 MB: the body was never held whole


def test_authenticated_routes_have_their_own_body_limit(guarded: RunningServer) -> None:
    r = httpx.post(guarded.url + "/me/contacts/", content=b"x" * 100_000, timeout=10)
    assert r.status_code == 413
    assert r.json()["code"] == "too_large"


def test_every_answer_carries_the_security_headers(guarded: RunningServer) -> None:
    r = httpx.post(guarded.url + "/token", data={"username": "nobody", "password": "wrongwrong"}, timeout=10)
    assert r.status_code == 401
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    h = httpx.get(guarded.url + "/health", timeout=10)
    assert h.headers["x-content-type-options"] == "nosniff"


def test_docs_load_their_scripts_from_the_server_itself(guarded: RunningServer) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(guarded.url + page, timeout=10).text
        assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
        assert "/static-offline-docs/" in html
    js = httpx.get(guarded.url + "/static-offline-docs/swagger-ui-bundle.js", timeout=10)
    assert js.status_code == 200 and len(js.content) > 100_000


def test_docs_can_be_turned_off(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "s", env={"PEERPOST_DOCS_ENABLED": "false"}) as server:
        assert httpx.get(server.url + "/docs", timeout=10).status_code == 404


def test_the_data_directory_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "peerpost.db").touch(mode=0o644)  # as an older version left it
    with RunningServer(data) as server:
        r = httpx.post(
            server.url + "/users/",
            json={"username": "modes", "email": "modes@example.org", "password": "correct horse"},
            timeout=10,
        )
        assert r.status_code == 201
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        files = [p for p in data.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"peerpost.db", "jwt-secret"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for path in (p for p in data.rglob("*") if p.is_dir()):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


async def test_the_server_answers_while_slow_clients_hold_connections(guarded: RunningServer) -> None:
    held = [_connect(guarded, "127.0.0.3") for _ in range(15)]
    for sock in held:
        sock.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\n")
    try:
        async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
            answers = await asyncio.gather(*(http.get("/health") for _ in range(10)))
        assert all(a.status_code == 200 for a in answers)
    finally:
        for sock in held:
            sock.close()


def test_past_the_global_connection_cap_requests_are_refused_with_503(tmp_path: Path) -> None:
    env = {"PEERPOST_MAX_CONNECTIONS": "20", "PEERPOST_HTTP_HEADER_TIMEOUT_SECONDS": "30"}
    with RunningServer(tmp_path / "s", env=env) as server:
        held = [_connect(server, f"127.0.5.{i + 1}") for i in range(20)]  # many hosts, one each
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        try:
            extra = _connect(server, "127.0.5.99")
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_all(extra)
            extra.close()
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        finally:
            for sock in held:
                sock.close()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # and back after
