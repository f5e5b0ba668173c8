"""The UI's other screens in a real browser: steganography round trip, settings, readable errors."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from playwright.async_api import expect

from tests.browser.steps import TIMEOUT_MS, register, wait_keygen_then_chats

pytestmark = pytest.mark.browser


def _png(path, size=(160, 120)) -> None:
    image = Image.new("RGB", size)
    width, height = size
    pixels = [((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(height) for x in range(width)]
    image.putdata(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


async def test_hide_a_message_in_an_image_and_read_it_back(server, peer_uis, chromium, tmp_path):
    carol_ui = await peer_uis("carol")
    carol = await chromium("carol", carol_ui.server.launch_url())
    page = carol.page

    # A wrong password is a sentence, not JSON or a blank page.
    await page.fill("#login-username", "carol")
    await page.fill("#login-password", "not-the-password")
    await page.click("#login-btn")
    toast = page.locator(".toast.error").first
    await expect(toast).to_be_visible(timeout=TIMEOUT_MS)
    text = await toast.inner_text()
    assert "{" not in text and "Traceback" not in text and len(text) > 10

    # The page reads its contact lists when it turns ready; let that finish before the server is
    # pulled below (a read cut off by the kill is a 503 the console would log).
    loaded = lambda r: r.url.endswith("/api/contacts") and r.status == 200  # noqa: E731
    async with page.expect_response(loaded, timeout=60_000):
        await register(carol, "carol")
        await wait_keygen_then_chats(carol)

    # The server goes away: the page says so; it comes back: the notice goes.
    banner = page.locator("#offline-banner")
    await expect(banner).to_be_hidden()
    await asyncio.to_thread(server.kill)
    await expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    await carol.shot("10-server-offline")
    # Contact changes are pushed, so whatever changed while the server was away is read once the
    # peer has it back: the page fetches the lists again.
    async with page.expect_response(loaded, timeout=40_000):
        await asyncio.to_thread(server.restart)
        await expect(banner).to_be_hidden(timeout=40_000)

    cover = tmp_path / "cover.png"
    _png(cover)
    await page.click('.navbtn[data-view="stego"]')
    await page.set_input_files("#hide-image", str(cover))
    await expect(page.locator("#hide-capacity")).to_contain_text("can hold", timeout=TIMEOUT_MS)
    await page.fill("#hide-message", "Meet at the old mill at nine.")
    await page.fill("#hide-passphrase", "blue heron")
    await page.click("#hide-btn")
    await expect(page.locator("#hide-preview")).to_be_visible(timeout=TIMEOUT_MS)
    async with page.expect_download() as info:
        await page.click("#hide-download")
    hidden = tmp_path / "hidden.png"
    await (await info.value).save_as(hidden)
    assert hidden.read_bytes() != cover.read_bytes()
    await carol.shot("08-steganography")

    # Wrong passphrase: a readable refusal; the right one: the message.
    await page.set_input_files("#reveal-image", str(hidden))
    await page.fill("#reveal-passphrase", "grey heron")
    await page.click("#reveal-btn")
    await expect(page.locator(".toast.error", has_text="passphrase")).to_be_visible(timeout=TIMEOUT_MS)
    await page.fill("#reveal-passphrase", "blue heron")
    await page.click("#reveal-btn")
    revealed = page.locator("#reveal-result")
    await expect(revealed).to_have_text("Meet at the old mill at nine.", timeout=TIMEOUT_MS)

    # An image without a hidden message says so.
    await page.set_input_files("#reveal-image", str(cover))
    await page.fill("#reveal-passphrase", "")
    await page.click("#reveal-btn")
    nothing = page.locator(".toast.error", has_text="no PeerPost payload")
    await expect(nothing).to_be_visible(timeout=TIMEOUT_MS)

    # Settings: a bad ICE URL is explained; a good one is saved.
    await page.click('.navbtn[data-view="settings"]')
    await expect(page.locator("#set-server")).to_have_value(server.url)
    await page.fill("#set-ice", "http://not-ice.example")
    await page.click("#settings-save")
    await expect(page.locator(".toast.error", has_text="STUN or TURN")).to_be_visible()
    await page.fill("#set-ice", "stun:127.0.0.1:3478")
    await page.click("#settings-save")
    await expect(page.locator("#settings-saved")).to_have_text("Saved.")
    await carol.shot("09-settings")
    assert carol_ui.bridge.settings.ice_servers == ["stun:127.0.0.1:3478"]

    # The launch link works once: opened again, it explains instead of logging in.
    second = await carol.context.new_page()
    await second.goto(f"{carol_ui.server.url}/launch?token=used-or-guessed")
    await expect(second.locator("h1")).to_have_text("This link has been used")

    # The refusals provoked above are 4xx answers, which chromium itself logs as "Failed to load
    # resource ... 4xx"; those lines (and only those) are expected here. Any script error still fails.
    carol.assert_clean(allow_http_4xx=True)
