"""The local UI server lets in the browser that opened the launch link, and refuses everyone else.

These drive a real UiServer (uvicorn on a loopback port) over real sockets with httpx and the
websockets client; no peer is logged in, which is exactly the state an attacker would find.
"""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from peer.profile import Profile
from peer.ui.bridge import PeerBridge, UiSettings
from peer.ui.security import SESSION_COOKIE
from peer.ui.server import UiServer, UiServerError


@pytest.fixture
async def ui(tmp_path):
    settings = UiSettings(server_url="http://127.0.0.1:9", path=tmp_path / "ui-settings.json")
    bridge = PeerBridge(settings, Profile.at(tmp_path / "profile"))
    async with UiServer(bridge) as server:
        yield server


def _client(ui: UiServer, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=ui.url, follow_redirects=False, timeout=5, **kw)


async def _session(ui: UiServer, client: httpx.AsyncClient) -> str:
    token = ui.gate.launch_token
    response = await client.get(f"/launch?token={token}")
    assert response.status_code == 303
    return response.cookies[SESSION_COOKIE]


async def test_launch_token_works_once(ui):
    token = ui.gate.launch_token
    async with _client(ui) as first:
        response = await first.get(f"/launch?token={token}")
        assert response.status_code == 303
        assert response.headers["location"] == "/"
    async with _client(ui) as second:
        again = await second.get(f"/launch?token={token}")
        assert again.status_code == 403
        assert "already used" in again.text
        assert again.headers["content-type"].startswith("text/html")
        assert SESSION_COOKIE not in again.cookies
    with pytest.raises(UiServerError):
        ui.launch_url()


async def test_wrong_launch_token_is_refused_and_the_right_one_still_works(ui):
    async with _client(ui) as client:
        wrong = await client.get("/launch?token=guess")
        assert wrong.status_code == 403
        assert ui.gate.launch_token is not None
        assert (await client.get(f"/launch?token={ui.gate.launch_token}")).status_code == 303


async def test_session_cookie_is_httponly_samesite_strict_and_signed(ui):
    async with _client(ui) as client:
        response = await client.get(f"/launch?token={ui.gate.launch_token}")
        header = response.headers["set-cookie"]
        attrs = [a.strip().lower() for a in header.split(";")]
        assert "httponly" in attrs
        assert "samesite=strict" in attrs
        assert "path=/" in attrs
        value = response.cookies[SESSION_COOKIE]
        assert "." in value  # itsdangerous: payload.timestamp.signature
        state = await client.get("/api/state")
        assert state.status_code == 200
        assert state.json()["phase"] == "logged_out"
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    async with _client(ui) as other:
        forged = await other.get("/api/state", headers={"Cookie": f"{SESSION_COOKIE}={tampered}"})
        assert forged.status_code == 401
        assert "earlier run" in forged.json()["error"]


async def test_api_and_page_without_session_are_refused_with_a_readable_message(ui):
    async with _client(ui) as client:
        api = await client.get("/api/state")
        assert api.status_code == 401
        assert "peerpost ui" in api.json()["error"]
        page = await client.get("/")
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert "Open the link printed by" in page.text


async def test_foreign_host_is_refused_even_with_a_valid_session(ui):
    async with _client(ui) as client:
        cookie = await _session(ui, client)
        rebound = await client.get("/api/state", headers={"Host": f"evil.example:{ui.port}"})
        assert rebound.status_code == 421
        assert rebound.json()["code"] == "foreign_host"
        assert cookie  # the session is real; the Host alone got it refused
        ok = await client.get("/api/state", headers={"Host": f"localhost:{ui.port}"})
        assert ok.status_code == 200


async def test_foreign_origin_and_missing_origin_cannot_change_state(ui):
    async with _client(ui) as client:
        await _session(ui, client)
        body = {"server_url": "http://127.0.0.1:8000", "ice_servers": []}
        csrf = await client.put("/api/settings", json=body, headers={"Origin": "https://evil.example"})
        assert csrf.status_code == 403
        assert csrf.json()["code"] == "foreign_origin"
        bare = await client.put("/api/settings", json=body)
        assert bare.status_code == 403
        assert bare.json()["code"] == "missing_origin"
        assert (await client.get("/api/settings")).json()["server_url"] == "http://127.0.0.1:9"
        same = await client.put("/api/settings", json=body, headers={"Origin": ui.url})
        assert same.status_code == 200
        assert same.json()["server_url"] == "http://127.0.0.1:8000"


async def test_events_socket_needs_session_and_own_origin(ui):
    ws = f"ws://127.0.0.1:{ui.port}/api/events"
    async with _client(ui) as client:
        cookie = await _session(ui, client)
    header = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    with pytest.raises(InvalidStatus) as foreign:
        async with websockets.connect(ws, origin="https://evil.example", additional_headers=header):
            pass
    assert foreign.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        async with websockets.connect(ws, origin=ui.url):
            pass  # no cookie
    async with websockets.connect(ws, origin=ui.url, additional_headers=header) as sock:
        first = await sock.recv()
        assert '"type": "state"' in first or '"type":"state"' in first


async def test_bad_settings_are_explained_and_nothing_is_saved(ui):
    async with _client(ui, headers={"Origin": ui.url}) as client:
        await _session(ui, client)
        bad = await client.put("/api/settings", json={"server_url": "ftp:/x", "ice_servers": []})
        assert bad.status_code == 400
        assert "not a server URL" in bad.json()["error"]
        bad_ice = await client.put(
            "/api/settings", json={"server_url": "http://127.0.0.1:8000", "ice_servers": ["http://x"]}
        )
        assert "STUN or TURN" in bad_ice.json()["error"]
        assert (await client.get("/api/settings")).json()["server_url"] == "http://127.0.0.1:9"
        garbage = await client.post("/api/login", content=b"{not json")
        assert garbage.status_code == 400
        assert garbage.json()["error"].startswith("The request was not understood")


async def test_ui_refuses_to_listen_beyond_loopback(tmp_path):
    bridge = PeerBridge(UiSettings(server_url="http://127.0.0.1:9"), Profile.at(tmp_path))
    with pytest.raises(UiServerError, match="loopback"):
        UiServer(bridge, host="0.0.0.0")
