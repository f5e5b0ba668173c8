"""What people do every day, in alice's real browser window (issue 15): block and unblock, edit
and delete, links, my devices, password and e-mail, undo "verified", notifications and the unread
count in the title, account deletion. bob (and alice's second device) are plain peers on the same
real server, so every check is on what really arrived."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from peer import Peer
from peer.events import SessionReestablished
from signalling.protocol import UserUpdate
from tests.browser.steps import TIMEOUT_MS, register, wait_keygen_then_chats
from tests.peer.conftest import PASSWORD, World

pytestmark = pytest.mark.browser
ALICE_PASSWORD = "alice-correct-horse"


def contact(page: Page, username: str):
    return page.locator(f'#contact-groups button.person[data-user="{username}"]')


@pytest.fixture
async def world(server, tmp_path) -> AsyncIterator[World]:
    w = World(server, tmp_path / "peers")
    try:
        yield w
    finally:
        await w.close()


async def alice_with_bob(peer_uis, chromium, world):
    alice_ui = await peer_uis("alice")
    alice = await chromium("alice", alice_ui.server.launch_url())
    await register(alice, "alice")
    await wait_keygen_then_chats(alice)
    bob = world.peer("bob", 1)
    await bob.register("bob", "bob@example.org", PASSWORD)
    await bob.add_contact("alice")
    await alice.page.click('[aria-label="Accept bob"]', timeout=TIMEOUT_MS)
    await expect(contact(alice.page, "bob")).to_be_visible(timeout=TIMEOUT_MS)
    return alice_ui, alice, bob


async def test_block_from_the_conversation_lists_bob_and_unblock_clears_it(server, peer_uis, chromium, world):
    alice_ui, alice, _bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    a.on("dialog", lambda d: d.accept())
    await contact(a, "bob").click()
    await a.click("#block-btn")
    await expect(contact(a, "bob")).to_have_count(0, timeout=TIMEOUT_MS)
    assert [b.username for b in await alice_ui.bridge.peer.blocked()] == ["bob"]
    await a.click('.navbtn[data-view="settings"]')
    blocked = a.locator('#blocked-list [data-user="bob"]')
    await expect(blocked).to_be_visible(timeout=TIMEOUT_MS)
    await a.click('[aria-label="Unblock bob"]')
    await expect(a.locator("#blocked-list")).to_contain_text("You have blocked nobody", timeout=TIMEOUT_MS)
    assert await alice_ui.bridge.peer.blocked() == []
    alice.assert_clean()


async def test_edit_delete_for_everyone_delete_for_me_and_safe_links(server, peer_uis, chromium, world):
    _alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    bob_events = world.record(bob)
    alice_id = await bob.resolve_user("alice")
    await contact(a, "bob").click()

    incoming = await bob.send_text(alice_id, "the plan is at https://example.org/plan?x=1. read it")
    link = a.locator("#messages .msg.in a.msglink")
    await expect(link).to_have_attribute("href", "https://example.org/plan?x=1", timeout=TIMEOUT_MS)
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(link).to_have_attribute("target", "_blank")
    assert await a.locator("#messages img, #messages iframe").count() == 0  # no preview

    await a.fill("#message-input", "see you at 5")
    await a.press("#message-input", "Enter")
    mine = a.locator("#messages .msg.out", has_text="see you at 5")
    await expect(mine).to_be_visible(timeout=TIMEOUT_MS)
    sent = await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "see you at 5")
    await mine.locator(".msg-actions").click()
    await a.fill("#edit-text", "see you at 6")
    await a.click("#edit-save")
    await expect(a.locator("#messages .msg.out", has_text="see you at 6").locator(".edited")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    await bob_events.wait_for(lambda e: e.type == "message_edited")
    assert (await bob.message(sent.message.message_id)).text == "see you at 6"

    await bob.edit_message(incoming.message_id, "the plan moved")
    edited_in = a.locator("#messages .msg.in", has_text="the plan moved")
    await expect(edited_in.locator(".edited")).to_be_visible(timeout=TIMEOUT_MS)

    await a.locator("#messages .msg.out", has_text="see you at 6").locator(".msg-actions").click()
    await a.click("#delete-everyone")
    await expect(a.locator("#messages .msg.deleted")).to_have_count(1, timeout=TIMEOUT_MS)
    await bob_events.wait_for(lambda e: e.type == "message_deleted")
    assert (await bob.message(sent.message.message_id)).kind == "deleted"

    await edited_in.locator(".msg-actions").click()
    await expect(a.locator("#delete-everyone")).to_be_hidden()  # not hers: only for her
    await a.click("#delete-me")
    await expect(a.locator("#messages .msg.in")).to_have_count(0, timeout=TIMEOUT_MS)
    assert (await bob.message(incoming.message_id)).text == "the plan moved"  # still his
    alice.assert_clean()


async def test_devices_account_and_unverify_from_the_settings(server, peer_uis, chromium, world):
    alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    a.on("dialog", lambda d: d.accept())
    laptop = world.peer("alice-laptop", 2)
    await laptop.login("alice", ALICE_PASSWORD)
    laptop_device = laptop.me.device_id

    await bob.server.update_me(UserUpdate(display_name="Bob Builder"))
    await a.reload()
    await expect(contact(a, "bob").locator(".display-name")).to_have_text("Bob Builder", timeout=TIMEOUT_MS)
    await a.click('.navbtn[data-view="settings"]')
    await expect(a.locator("#devices-list .device")).to_have_count(2, timeout=TIMEOUT_MS)  # settings read
    await a.fill("#display-name", "Alice Martin")
    await a.click("#name-save")
    await expect(a.locator("#toasts")).to_contain_text("Alice Martin", timeout=TIMEOUT_MS)
    bobs_view = [c for c in await bob.contacts() if c.username == "alice"]
    assert [c.display_name for c in bobs_view] == ["Alice Martin"]
    rows = a.locator("#devices-list .device")
    await expect(rows).to_have_count(2, timeout=TIMEOUT_MS)
    await expect(rows.first).to_contain_text("(this device)")
    other = a.locator(f'#devices-list [data-device="{laptop_device}"]')
    await other.locator("input").fill("old laptop")
    await other.get_by_role("button", name=f"Rename device {laptop_device}").click()
    await expect(other.locator(".name")).to_have_text("old laptop", timeout=TIMEOUT_MS)
    await other.get_by_role("button", name=f"Revoke device {laptop_device}").click()
    await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
    listed = await alice_ui.bridge.peer.server.devices(alice_ui.bridge.peer.me.user_id)
    assert [d.device_id for d in listed] == [alice_ui.bridge.peer.me.device_id]

    await a.fill("#email-new", "alice@new.example.org")
    await a.fill("#email-password", ALICE_PASSWORD)
    await a.click("#email-save")
    await expect(a.locator("#toasts")).to_contain_text("alice@new.example.org", timeout=TIMEOUT_MS)
    assert (await alice_ui.bridge.peer.server.me()).email == "alice@new.example.org"

    await a.fill("#pw-current", ALICE_PASSWORD)
    await a.fill("#pw-new", "a whole new passphrase")
    await a.click("#pw-save")
    await expect(a.locator("#toasts")).to_contain_text("Password changed", timeout=TIMEOUT_MS)
    # Still connected with the new session: a message goes out and arrives.
    bob_events = world.record(bob)
    await a.click('.navbtn[data-view="chats"]')
    await contact(a, "bob").click()
    await a.fill("#message-input", "after the new password")
    await a.press("#message-input", "Enter")
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "after the new password")

    await a.click("#safety-btn")
    await a.click("#verify-btn")
    await expect(a.locator("#unverify-btn")).to_be_visible(timeout=TIMEOUT_MS)
    await a.click("#unverify-btn")
    await expect(a.locator("#safety-state")).to_contain_text("not verified", timeout=TIMEOUT_MS)
    assert not await alice_ui.bridge.peer.is_verified(bob.me.user_id)
    alice.assert_clean()


async def test_notifications_are_offered_once_and_shown_for_a_hidden_tab_with_the_unread_title(
    server, peer_uis, chromium, world
):
    _alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    await expect(a.locator("#notify-ask")).to_be_visible(timeout=TIMEOUT_MS)
    await a.click("#notify-no")
    await a.reload()
    await expect(contact(a, "bob")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(a.locator("#notify-ask")).to_be_hidden()  # asked once

    await alice.context.grant_permissions(["notifications"])
    await a.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", { value: true, configurable: true });
            window.__notes = [];
            const Real = window.Notification;
            window.Notification = class extends Real {
              constructor(title, options) {
                super(title, options);
                window.__notes.push([title, options.body]);
              }
            };
        }"""
    )
    alice_id = await bob.resolve_user("alice")
    await bob.send_text(alice_id, "are you there?")
    await expect(a).to_have_title("(1) PeerPost", timeout=TIMEOUT_MS)
    await a.wait_for_function("() => window.__notes.length === 1", timeout=TIMEOUT_MS)
    assert await a.evaluate("() => window.__notes") == [["bob — PeerPost", "are you there?"]]
    await bob.send_text(alice_id, "hello?")
    await expect(a).to_have_title("(2) PeerPost", timeout=TIMEOUT_MS)
    alice.assert_clean()


async def test_deleting_the_account_needs_the_username_and_ends_at_the_login(
    server, peer_uis, chromium, world
):
    alice_ui, alice, _bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    a.on("dialog", lambda d: d.accept())
    await a.click('.navbtn[data-view="settings"]')
    await a.fill("#delete-confirm", "alicia")
    await a.fill("#delete-password", ALICE_PASSWORD)
    await a.click("#delete-account-btn")
    refused = re.compile("type your username", re.IGNORECASE)
    await expect(a.locator("#toasts")).to_contain_text(refused, timeout=TIMEOUT_MS)
    await a.fill("#delete-confirm", "alice")
    await a.fill("#delete-password", ALICE_PASSWORD)
    await a.click("#delete-account-btn")
    await expect(a.locator("#toasts")).to_contain_text("Your account was deleted", timeout=TIMEOUT_MS)
    assert alice_ui.bridge.peer is None
    fresh: Peer = world.peer("alice-again", 3)
    with pytest.raises(Exception, match=r"(?i)password|credentials|incorrect"):
        await fresh.login("alice", ALICE_PASSWORD)
    alice.assert_clean(allow_http_4xx=True)


async def test_searching_my_messages_finds_them_and_opens_the_conversation(server, peer_uis, chromium, world):
    _alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    alice_id = await bob.resolve_user("alice")
    await bob.send_text(alice_id, "the quarterly figures are ready")
    await bob.send_text(alice_id, "and lunch is at noon")
    await expect(contact(a, "bob").locator(".last")).to_have_text("and lunch is at noon", timeout=TIMEOUT_MS)
    await a.fill("#msg-search-input", "quarter fig")
    await a.press("#msg-search-input", "Enter")
    found = a.locator("#msg-search-results .found")
    await expect(found).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(found).to_contain_text("the quarterly figures are ready")
    await found.click()
    await expect(a.locator("#conv-name")).to_have_text("bob", timeout=TIMEOUT_MS)
    await a.fill("#msg-search-input", "xylophone")
    await a.press("#msg-search-input", "Enter")
    await expect(a.locator("#msg-search-results")).to_contain_text("No message contains", timeout=TIMEOUT_MS)
    alice.assert_clean()


async def test_a_disappearing_timer_shows_in_the_conversation_and_messages_vanish(
    server, peer_uis, chromium, world
):
    _alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    bob_events = world.record(bob)
    alice_id = await bob.resolve_user("alice")
    await contact(a, "bob").click()
    await bob.set_timer(alice_id, 5)
    await expect(a.locator("#messages .msg.system")).to_contain_text(
        "Disappearing messages set to 5 seconds", timeout=TIMEOUT_MS
    )
    await expect(a.locator("#timer-select")).to_have_value("5")
    await bob.send_text(alice_id, "gone in five")
    vanishing = a.locator("#messages .msg.in", has_text="gone in five")
    await expect(vanishing).to_be_visible(timeout=TIMEOUT_MS)
    await expect(vanishing).to_have_count(0, timeout=TIMEOUT_MS)  # the timer ran out
    await a.select_option("#timer-select", "0")
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "timer")
    assert await bob.timer(alice_id) == 0
    await expect(a.locator("#messages .msg.system").last).to_contain_text("turned off", timeout=TIMEOUT_MS)
    alice.assert_clean()


async def test_a_re_established_secure_session_is_a_notice_in_that_conversation(
    server, peer_uis, chromium, world
):
    alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    await contact(a, "bob").click()
    await bob.send_text(await bob.resolve_user("alice"), "hello again")
    await expect(a.locator("#messages .msg.in", has_text="hello again")).to_be_visible(timeout=TIMEOUT_MS)
    # The heal itself is tested with real stores (tests/peer/test_forward_secrecy.py); here the
    # node's event goes through the real bridge to the real page.
    alice_ui.bridge.peer._publish(SessionReestablished(bob.me.user_id, bob.me.device_id))
    notice = a.locator("#messages .msg.system", has_text="Secure session with bob re-established.")
    await expect(notice).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(a.locator("#messages .msg").last).to_have_class(re.compile(r"\bsystem\b"))
    alice.assert_clean()


async def test_my_history_goes_to_a_new_device_after_i_confirm_here(server, peer_uis, chromium, world):
    _alice_ui, alice, bob = await alice_with_bob(peer_uis, chromium, world)
    a = alice.page
    a.on("dialog", lambda d: d.accept())
    alice_id = await bob.resolve_user("alice")
    await bob.send_text(alice_id, "history worth keeping")
    await expect(contact(a, "bob").locator(".last")).to_have_text("history worth keeping", timeout=TIMEOUT_MS)
    laptop = world.peer("alice-laptop", 2)
    await laptop.login("alice", ALICE_PASSWORD)
    assert await laptop.history(bob.me.user_id) == []  # a new device starts empty
    laptop_events = world.record(laptop)
    await a.click('.navbtn[data-view="settings"]')
    await a.get_by_role("button", name=f"Send my history to device {laptop.me.device_id}").click()
    await expect(a.locator("#toasts")).to_contain_text("Sent", timeout=TIMEOUT_MS)
    got = await laptop_events.wait_for(lambda e: e.type == "history_received")
    assert got.stored >= 1
    assert "history worth keeping" in [m.text for m in await laptop.history(bob.me.user_id)]
    alice.assert_clean()
