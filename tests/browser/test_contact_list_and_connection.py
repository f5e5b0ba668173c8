"""What alice's window shows about her conversations and her connection, in a real browser.

alice uses the UI; bob and carol are plain peers (the same `Peer` the UI drives) on the same real
server. The contact list sorts by the last message and shows it; unread counts come from alice's
peer, so a reload shows the same numbers; the file bar follows the real transfer, and a file is
marked read only once it has arrived; the "not connected" banner says why, "Retry now" answers
with the reason, and the banner goes when the server is back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from peer import Peer
from tests.browser.steps import TIMEOUT_MS, register, wait_keygen_then_chats
from tests.peer.conftest import PASSWORD, World

pytestmark = pytest.mark.browser


def contact(page: Page, username: str):
    return page.locator(f'#contact-groups button.person[data-user="{username}"]')


def contact_names(page: Page):
    return page.locator("#contact-groups button.person .name")


@pytest.fixture
async def world(server, tmp_path) -> AsyncIterator[World]:
    w = World(server, tmp_path / "peers")
    try:
        yield w
    finally:
        await w.close()


async def befriend(page: Page, peer: Peer, name: str, n: int) -> None:
    """`name` registers as a plain peer and asks alice, who accepts in her window."""
    await peer.register(name, f"{name}@example.org", PASSWORD)
    await peer.add_contact("alice")
    await page.click(f'[aria-label="Accept {name}"]', timeout=TIMEOUT_MS)
    await expect(contact(page, name)).to_be_visible(timeout=TIMEOUT_MS)


async def alice_window(peer_uis, chromium):
    alice_ui = await peer_uis("alice")
    alice = await chromium("alice", alice_ui.server.launch_url())
    await register(alice, "alice")
    await wait_keygen_then_chats(alice)
    return alice_ui, alice


async def test_contact_list_sorts_by_activity_with_unread_counts_that_survive_a_reload(
    server, peer_uis, chromium, world
):
    _, alice = await alice_window(peer_uis, chromium)
    a = alice.page
    bob, carol = world.peer("bob", 1), world.peer("carol", 2)
    await befriend(a, bob, "bob", 1)
    await befriend(a, carol, "carol", 2)
    alice_id = await bob.resolve_user("alice")

    await bob.send_text(alice_id, "first from bob")
    await expect(contact(a, "bob").locator(".last")).to_have_text("first from bob", timeout=TIMEOUT_MS)
    await carol.send_text(alice_id, "hello from carol")
    await expect(contact(a, "carol").locator(".last")).to_have_text("hello from carol", timeout=TIMEOUT_MS)
    await expect(contact_names(a)).to_have_text(["carol", "bob"])  # the latest conversation first

    await bob.send_text(alice_id, "second from bob")
    await expect(contact_names(a)).to_have_text(["bob", "carol"], timeout=TIMEOUT_MS)
    await expect(contact(a, "bob").locator(".badge.unread")).to_have_text("2")
    await expect(contact(a, "carol").locator(".badge.unread")).to_have_text("1")
    await alice.shot("20-contact-list-activity")

    # The counts are the peer's, not the page's: a reload shows the same.
    await a.reload()
    await expect(contact(a, "bob").locator(".badge.unread")).to_have_text("2", timeout=TIMEOUT_MS)
    await expect(contact(a, "carol").locator(".badge.unread")).to_have_text("1")
    await expect(contact_names(a)).to_have_text(["bob", "carol"])
    await expect(contact(a, "bob").locator(".last")).to_have_text("second from bob")

    # Reading bob's conversation clears his count, for good; carol's stays.
    bob_events = world.record(bob)
    await contact(a, "bob").click()
    await expect(a.locator("#messages .msg.in")).to_have_count(2, timeout=TIMEOUT_MS)
    await bob_events.wait_for(lambda e: e.type == "receipt" and e.status == "read")
    await a.reload()
    await expect(contact(a, "carol").locator(".badge.unread")).to_have_text("1", timeout=TIMEOUT_MS)
    await expect(contact(a, "bob").locator(".badge.unread")).to_have_count(0)

    # alice answers: her own message is now the last line, marked as hers.
    await contact(a, "carol").click()
    await a.fill("#message-input", "hi carol")
    await a.press("#message-input", "Enter")
    await expect(contact(a, "carol").locator(".last")).to_have_text("You: hi carol", timeout=TIMEOUT_MS)
    await expect(contact_names(a)).to_have_text(["carol", "bob"])
    alice.assert_clean()


async def test_file_bar_follows_the_transfer_and_a_file_is_read_only_once_it_arrived(
    server, peer_uis, chromium, world, tmp_path
):
    _, alice = await alice_window(peer_uis, chromium)
    a = alice.page
    bob = world.peer("bob", 1)
    await befriend(a, bob, "bob", 1)
    bob_events = world.record(bob)
    await contact(a, "bob").click()
    await expect(contact(a, "bob").locator(".dot.on")).to_be_visible(timeout=TIMEOUT_MS)
    await a.fill("#message-input", "a file follows")
    await a.press("#message-input", "Enter")
    await expect(a.locator("#messages .msg.out .path")).to_have_text("direct", timeout=TIMEOUT_MS)

    # Every value the bottom bar's transfer half takes, as the page sets it.
    await a.evaluate(
        """() => {
        window.__fractions = [];
        new MutationObserver((records) => {
          for (const r of records) window.__fractions.push(Number(r.target.dataset.fraction));
        }).observe(document.querySelector("#upload"),
                   { attributes: true, attributeFilter: ["data-fraction"] });
    }"""
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(6 * 1024 * 1024))
    await a.set_input_files("#file-input", str(source))
    offer = await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "file", within=30)
    file_id = offer.message.message_id

    # bob "opens" the conversation at once: a file still arriving is not marked read.
    early = await bob.mark_read(alice_id := offer.message.sender_user, [file_id])
    arrived_early = (await bob.message(file_id)).file.get("state") == "done"
    assert early == ([file_id] if arrived_early else [])

    await bob.wait_file(file_id, within=60)
    assert await bob.mark_read(alice_id, [file_id]) == [file_id]
    sent = a.locator("#messages .msg.out", has_text="big.bin")
    await expect(sent).to_have_attribute("data-state", "read", timeout=TIMEOUT_MS)
    await expect(a.locator("#upload")).to_be_hidden(timeout=TIMEOUT_MS)

    fractions = await a.evaluate("window.__fractions")
    moving = [f for f in fractions if 0 < f < 1]
    assert moving, f"the bar never showed the transfer in progress: {fractions}"
    assert fractions == sorted(fractions), "the bar went backwards"
    alice.assert_clean()


async def test_offline_banner_says_why_retries_now_and_goes_when_the_server_is_back(
    server, peer_uis, chromium
):
    _, alice = await alice_window(peer_uis, chromium)
    a = alice.page
    banner = a.locator("#offline-banner")
    await expect(banner).to_be_hidden()

    await asyncio.to_thread(server.kill)
    await expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    reason = a.locator("#offline-reason")
    await expect(reason).to_contain_text("Not connected to the PeerPost server:")
    # The peer's real reason: the dropped connection, then the refused attempts to reconnect.
    await expect(reason).to_contain_text("refused", timeout=TIMEOUT_MS)
    await expect(reason).to_contain_text(server.url)
    await alice.shot("21-offline-reason")

    await a.click("#retry-btn")  # the server is still away: the answer says so, the page lives on
    await expect(reason).to_contain_text("refused", timeout=TIMEOUT_MS)

    # Back by itself (the back-off is capped at 1.6 s; tests/peer/test_reconnect.py shows that
    # "Retry now" skips a long one): the banner goes.
    await asyncio.to_thread(server.restart)
    await expect(banner).to_be_hidden(timeout=TIMEOUT_MS)
    await expect(a.locator("#link-dot.on")).to_be_visible()
    alice.assert_clean()
