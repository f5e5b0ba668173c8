"""Browser tests: Playwright drives Debian's chromium against real peers with their UIs.

Never a downloaded browser: `executable_path=/usr/bin/chromium`, with the flags that keep it from
talking to anything but loopback (field-notes.md, "Browser tests"). Each window collects console
messages and page errors; `Window.assert_clean()` fails the test on any of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, Response, async_playwright

from peer.profile import Profile
from peer.ui.bridge import PeerBridge, UiSettings
from peer.ui.server import UiServer

CHROMIUM = os.environ.get("PEERPOST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HTTP_4XX = re.compile(r"console error: Failed to load resource: the server responded with a status of 4\d\d")
SCREENSHOTS = Path(__file__).parent / "screenshots-run"
DESKTOP = {"width": 1180, "height": 760}
PHONE = {"width": 390, "height": 780}


@dataclass
class Window:
    """One person's browser context and page, with every console error it logged."""

    name: str
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)

    def watch(self) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "assert"):
                self.problems.append(f"{self.name} console {message.type}: {message.text}")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda err: self.problems.append(f"{self.name} page error: {err}"))
        self.page.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        # Chromium's console line for a failed request does not say which one; this does.
        if response.status >= 400:
            method = response.request.method
            self.http_errors.append(f"{self.name} HTTP {response.status} {method} {response.url}")

    async def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path))
        return path

    def assert_clean(self, allow_http_4xx: bool = False) -> None:
        problems = self.problems
        if allow_http_4xx:
            problems = [p for p in problems if not HTTP_4XX.search(p)]
        assert problems == [], "the page logged errors:\n" + "\n".join(problems + self.http_errors)


@dataclass
class PeerUi:
    """A peer's UI server, as `peerpost ui` runs it, with its own profile directory."""

    name: str
    bridge: PeerBridge
    server: UiServer
    profile_dir: Path


@pytest.fixture
def chromium_path() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"chromium not found at {CHROMIUM}; scripts/bootstrap.sh --test installs it")
    return CHROMIUM


@pytest.fixture
async def chromium(tmp_path: Path, chromium_path: str) -> AsyncIterator[object]:
    async with async_playwright() as pw:

        async def open_window(name: str, url: str, viewport: dict[str, int] | None = None) -> Window:
            user_data = tmp_path / f"chromium-{name}"
            context = await pw.chromium.launch_persistent_context(
                str(user_data),
                executable_path=chromium_path,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=viewport or DESKTOP,
                accept_downloads=True,
                locale="en-GB",
                timezone_id="UTC",
            )
            contexts.append(context)
            page = context.pages[0] if context.pages else await context.new_page()
            window = Window(name, context, page)
            window.watch()
            await page.goto(url)
            return window

        contexts: list[BrowserContext] = []
        try:
            yield open_window
        finally:
            for context in contexts:
                with contextlib.suppress(Exception):
                    await context.close()


@pytest.fixture
async def peer_uis(server, tmp_path: Path) -> AsyncIterator[object]:
    """Start peers with UIs against the test's server: 127.0.0.1 host candidates, no ICE servers."""
    running: list[PeerUi] = []
    stack = contextlib.AsyncExitStack()

    async def start(name: str, profile_dir: Path | None = None) -> PeerUi:
        profile_dir = profile_dir or tmp_path / f"profile-{name}"
        settings = UiSettings(
            server_url=server.url,
            ice_servers=[],
            host_addresses=["127.0.0.1"],
            path=profile_dir / "ui-settings.json",
        )
        bridge = PeerBridge(settings, Profile.at(profile_dir))
        ui = await stack.enter_async_context(UiServer(bridge))
        stack.push_async_callback(bridge.close)
        peer_ui = PeerUi(name, bridge, ui, profile_dir)
        running.append(peer_ui)
        return peer_ui

    async with stack:
        yield start


def wipe(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
