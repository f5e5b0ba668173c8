"""Two people, two browsers, two peers, one server: the whole story the UI exists for.

alice and bob register in their own browser contexts, add and accept each other, see each other
online, talk (the UI shows that messages went "direct"), share a file (bytes equal after download),
compare safety numbers and alice marks bob verified; then bob's device key changes, alice's
conversation warns about it, and she re-confirms the new key before writing to it. No page may
log a console error along the way.
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import PHONE, wipe
from tests.browser.steps import TIMEOUT_MS, login, register, wait_keygen_then_chats

pytestmark = pytest.mark.browser


def contact(page: Page, username: str):
    return page.locator(f'#contact-groups button.person[data-user="{username}"]')


async def test_two_people_chat_share_a_file_verify_and_see_a_key_change(server, peer_uis, chromium, tmp_path):
    alice_ui = await peer_uis("alice")
    bob_ui = await peer_uis("bob")
    alice = await chromium("alice", alice_ui.server.launch_url())
    bob = await chromium("bob", bob_ui.server.launch_url())
    a, b = alice.page, bob.page

    # Register and first login: keys are made in the peer, with a progress bar.
    await register(alice, "alice")
    await wait_keygen_then_chats(alice, "01-first-login-keygen")
    await register(bob, "bob")
    await wait_keygen_then_chats(bob)
    await expect(a.locator("#me-name")).to_have_text("alice")

    # alice finds bob and asks; bob accepts the request that appears live (pushed by the server:
    # nothing polls, and bob's page is not reloaded — the marker below would be gone).
    await b.evaluate("window.__samePage = true")
    await a.fill("#search-input", "bob")
    await a.press("#search-input", "Enter")
    await a.click('#search-results [aria-label="Add bob"]')
    await expect(a.locator('#outgoing-list [data-user="bob"]')).to_be_visible(timeout=TIMEOUT_MS)
    await expect(b.locator('#incoming-list [data-user="alice"]')).to_be_visible(timeout=TIMEOUT_MS)
    assert await b.evaluate("window.__samePage === true")
    await bob.shot("02-incoming-request")
    await b.click('[aria-label="Accept alice"]')

    # Both see each other online.
    await expect(contact(a, "bob").locator(".dot.on")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(contact(b, "alice").locator(".dot.on")).to_be_visible(timeout=TIMEOUT_MS)

    # alice writes; bob reads it live; both sides say it went direct; alice sees it read.
    await contact(a, "bob").click()
    await a.fill("#message-input", "Hi bob, this goes straight to you.")
    await a.press("#message-input", "Enter")
    await contact(b, "alice").click()
    incoming = b.locator("#messages .msg.in", has_text="this goes straight to you")
    await expect(incoming).to_be_visible(timeout=TIMEOUT_MS)
    await expect(incoming.locator(".path")).to_have_text("direct")
    sent = a.locator("#messages .msg.out", has_text="this goes straight to you")
    await expect(sent.locator(".path")).to_have_text("direct", timeout=TIMEOUT_MS)
    await expect(sent).to_have_attribute("data-state", "read", timeout=TIMEOUT_MS)

    # bob uses only the keyboard: focus alice in the list, Enter opens the chat and its input.
    await contact(b, "alice").focus()
    await b.keyboard.press("Enter")
    await expect(b.locator("#message-input")).to_be_focused()

    # bob types: alice sees the typing indicator, then the reply.
    await b.keyboard.type("Hello alice", delay=20)
    await expect(a.locator("#typing")).to_contain_text("bob is typing", timeout=TIMEOUT_MS)
    await b.press("#message-input", "Enter")
    reply = a.locator("#messages .msg.in", has_text="Hello alice")
    await expect(reply).to_be_visible(timeout=TIMEOUT_MS)
    await expect(reply.locator(".path")).to_have_text("direct")

    # alice files bob under a group with a remark; the list shows both.
    await a.click("#edit-contact-btn")
    await a.fill("#contact-group", "Climbing")
    await a.fill("#contact-remark", "belays on Tuesdays")
    await a.click("#contact-save")
    await expect(a.locator(".group-name", has_text="Climbing")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(contact(a, "bob")).to_contain_text("belays on Tuesdays")

    # alice sends a file; bob downloads it and gets the same bytes.
    original = os.urandom(300_000)
    source = tmp_path / "holiday-notes.bin"
    source.write_bytes(original)
    await a.set_input_files("#file-input", str(source))
    received = b.locator("#messages .msg.in", has_text="holiday-notes.bin")
    download_link = received.locator("a.download")
    await expect(download_link).to_be_visible(timeout=30_000)
    await expect(received.locator(".path")).to_have_text("direct")
    await alice.shot("03-conversation")
    async with b.expect_download() as info:
        await download_link.click()
    download = await info.value
    saved = tmp_path / "downloaded.bin"
    await download.save_as(saved)
    assert download.suggested_filename == "holiday-notes.bin"
    assert saved.read_bytes() == original

    # Safety numbers: both sides show the same digits and a QR code; alice marks bob verified.
    await a.click("#safety-btn")
    await b.click("#safety-btn")
    for page in (a, b):
        await expect(page.locator("#safety-dialog")).to_be_visible()
        await expect(page.locator("#safety-qr img")).to_be_visible()
        await expect(page.locator("#safety-digits")).to_have_text(re.compile(r"^(\d{5}\s+){11}\d{5}$"))
    digits_a = (await a.locator("#safety-digits").inner_text()).split()
    digits_b = (await b.locator("#safety-digits").inner_text()).split()
    assert len("".join(digits_a)) == 60
    assert digits_a == digits_b
    await alice.shot("04-safety-number")
    await a.click("#verify-btn")
    await expect(a.locator("#safety-state")).to_contain_text("verified")
    await a.keyboard.press("Escape")
    await b.keyboard.press("Escape")
    await expect(contact(a, "bob").locator(".badge.verified")).to_be_visible()

    # bob's device key changes: his profile is lost and he logs in again with fresh keys.
    await b.click("#logout-btn")
    await expect(b.locator("#view-auth")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(b.locator("#login-username")).to_have_value("bob")  # the profile remembers him
    wipe(bob_ui.profile_dir)
    await login(bob, "bob")
    await wait_keygen_then_chats(bob)
    warning = a.locator("#key-warning")
    await expect(warning).to_be_visible(timeout=30_000)
    await expect(warning).to_contain_text("bob")
    await expect(contact(a, "bob").locator(".badge.warn")).to_have_text("new device")
    await alice.shot("05-key-change-warning")

    # alice compares the new safety number and confirms it; then she can write to the new device.
    await a.click("#safety-btn")
    await expect(a.locator("#safety-dialog")).to_be_visible()
    new_digits = a.locator("#safety-digits")
    await expect(new_digits).to_have_text(re.compile(r"^(\d{5}\s+){11}\d{5}$"))
    assert (await new_digits.inner_text()).split() != digits_a
    await expect(a.locator("#verify-btn")).to_be_visible()
    await a.click("#verify-btn")
    await expect(a.locator("#safety-state")).to_contain_text("verified")
    await a.keyboard.press("Escape")
    await expect(warning).to_be_hidden()
    await a.fill("#message-input", "Welcome back, bob.")
    await a.press("#message-input", "Enter")
    await contact(b, "alice").click()
    await expect(b.locator("#messages .msg.in", has_text="Welcome back")).to_be_visible(timeout=TIMEOUT_MS)

    # The same conversation at phone width stays readable (notices dismissed by keyboard first).
    while await a.locator(".toast button").count():
        await a.locator(".toast button").first.focus()
        await a.keyboard.press("Enter")
    await a.set_viewport_size(PHONE)
    await alice.shot("06-phone-conversation")
    await a.click("#back-btn")
    await alice.shot("07-phone-contacts")

    alice.assert_clean()
    bob.assert_clean()
