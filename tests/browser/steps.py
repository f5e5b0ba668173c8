"""Steps several browser tests take, written as a person would do them."""

from __future__ import annotations

import re

from playwright.async_api import expect

from tests.browser.conftest import Window

TIMEOUT_MS = 20_000
KEYGEN_REPORT = re.compile(r"^\d+% (Generating .*|Keys ready)$")


async def register(window: Window, username: str) -> None:
    page = window.page
    await page.click("#tab-register")
    await page.fill("#reg-username", username)
    await page.fill("#reg-email", f"{username}@example.org")
    await page.fill("#reg-password", f"{username}-correct-horse")
    await page.press("#reg-password", "Enter")


async def login(window: Window, username: str) -> None:
    page = window.page
    await page.fill("#login-username", username)
    await page.fill("#login-password", f"{username}-correct-horse")
    await page.click("#login-btn")


async def wait_keygen_then_chats(window: Window, shot: str | None = None) -> None:
    """First login on a device shows the key-generation bar, then the chats."""
    page = window.page
    keygen = page.locator("#keygen")
    await expect(keygen).to_have_attribute("data-last-progress", KEYGEN_REPORT, timeout=TIMEOUT_MS)
    if shot:
        await window.shot(shot)
    await expect(page.locator("#view-chats")).to_be_visible(timeout=60_000)
    await expect(keygen).to_have_attribute("data-last-progress", "100% Keys ready")
