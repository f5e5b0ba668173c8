"""The `serve` command as a real subprocess: announces its port, migrates, answers, restarts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx

from tests.support.server import REPO_ROOT, RunningServer


def test_serve_announces_ephemeral_port_and_answers_health(server: RunningServer) -> None:
    assert server.port != 0
    response = httpx.get(server.url + "/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert server.database_path.exists()
    assert server.ws_url == f"ws://127.0.0.1:{server.port}/ws"


def test_serve_creates_jwt_secret_readable_only_by_owner(server: RunningServer) -> None:
    secret = server.data_dir / "jwt-secret"
    mode = stat.S_IMODE(os.stat(secret).st_mode)
    assert mode == 0o600
    assert len(secret.read_text().strip()) >= 64


def test_restart_after_kill_keeps_data_dir_and_port(server: RunningServer) -> None:
    port = server.port
    secret = (server.data_dir / "jwt-secret").read_text()
    server.kill()
    assert server.returncode == -9
    server.restart()
    assert server.port == port
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    assert (server.data_dir / "jwt-secret").read_text() == secret


def test_serve_refuses_a_port_in_use_with_a_clear_message(server: RunningServer, tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalling",
            "serve",
            "--port",
            str(server.port),
            "--data-dir",
            str(tmp_path / "x"),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr
    assert "listening" not in result.stdout


def test_serve_with_an_unreachable_database_says_so_and_exits(tmp_path) -> None:
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalling",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--database-url",
            url,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Error: could not migrate the database" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def test_serve_with_a_bad_setting_names_it(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signalling", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PEERPOST_BCRYPT_ROUNDS": "2"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert (
        "Error: bad setting: PEERPOST_BCRYPT_ROUNDS: Input should be greater than or equal to 4"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
