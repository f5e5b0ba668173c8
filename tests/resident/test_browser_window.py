"""A web UI window and CLI commands on one profile share the node: the page stays connected."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import chromium, chromium_path  # noqa: F401 - the browser fixtures
from tests.resident.conftest import Cli, received

pytestmark = pytest.mark.browser
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/launch\?token=\S+)")
TIMEOUT_MS = 20_000


async def test_a_ui_window_and_a_cli_send_on_one_profile_the_page_stays_connected(pair: Cli, chromium):  # noqa: F811
    link = LINK.search(pair.run("a", "ui").stdout).group(1)
    window = await chromium("alice", link)
    page = window.page
    await expect(page.locator("#view-chats")).to_be_visible(timeout=TIMEOUT_MS)  # no login: the node's
    await expect(page.locator("#me-name")).to_have_text("alice")
    bob = page.locator('#contact-groups button.person[data-user="bob"]')
    await bob.click()

    bob_listens = pair.listen("b")
    try:
        pair.run("a", "send", "bob", "from the terminal")  # the same profile as the window
        bob_listens.wait_for(received("from the terminal"))
        sent = page.locator("#messages .msg.out", has_text="from the terminal")
        await expect(sent).to_be_visible(timeout=TIMEOUT_MS)  # the window saw the CLI's send
        pair.run("b", "send", "alice", "to the window")
        await expect(page.locator("#messages .msg.in", has_text="to the window")).to_be_visible(
            timeout=TIMEOUT_MS
        )
        await expect(page.locator("#offline-banner")).to_be_hidden()
        state = await page.evaluate("fetch('/api/state').then(r => r.json())")
        assert state["phase"] == "ready" and state["online"] is True

        # A second window from another `peerpost ui`: both stay, and the page can still send.
        second = await chromium("alice-2", LINK.search(pair.run("a", "ui").stdout).group(1))
        await expect(second.page.locator("#view-chats")).to_be_visible(timeout=TIMEOUT_MS)
        await page.fill("#message-input", "typed in the first window")
        await page.press("#message-input", "Enter")
        bob_listens.wait_for(received("typed in the first window"))
        await expect(page.locator("#offline-banner")).to_be_hidden()
    finally:
        assert bob_listens.stop() == 0
    window.assert_clean()
