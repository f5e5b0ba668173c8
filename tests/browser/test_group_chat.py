"""Three people, three browsers, three peers, one server: a group, as people use one (issue 13).

alice makes "climbing" from her contacts bob and carol (who are not each other's contacts); all
three write and see who wrote what; typing shows who types; alice's message rolls up to "read by 2
of 2" and her edit of it shows "edited" on the others' pages; a file reaches both; alice renames the
group and bob's and carol's headers follow; alice removes carol: alice's and bob's timelines say so,
carol's page says she is out and will not let her write; alice adds her back and she writes again;
bob leaves. No page may log a console error along the way.
"""

from __future__ import annotations

import os

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import Window
from tests.browser.steps import TIMEOUT_MS, register, wait_keygen_then_chats

pytestmark = pytest.mark.browser


def contact(page: Page, username: str):
    return page.locator(f'#contact-groups button.person[data-user="{username}"]')


def group(page: Page, name: str):
    return page.locator(f'#group-list button.person[data-group="{name}"]')


def said(page: Page, text: str, direction: str = "in"):
    return page.locator(f"#messages .msg.{direction}", has_text=text)


async def write(page: Page, text: str) -> None:
    await page.fill("#message-input", text)
    await page.press("#message-input", "Enter")


async def test_a_group_from_contacts_talks_shares_a_file_renames_and_removes_a_member(
    server, peer_uis, chromium, tmp_path
):
    uis = {name: await peer_uis(name) for name in ("alice", "bob", "carol")}
    windows: dict[str, Window] = {}
    for name, ui in uis.items():
        windows[name] = await chromium(name, ui.server.launch_url())
        await register(windows[name], name)
    for window in windows.values():
        await wait_keygen_then_chats(window)
    alice, bob, carol = windows["alice"], windows["bob"], windows["carol"]
    a, b, c = alice.page, bob.page, carol.page
    for page in (a, b, c):
        page.on("dialog", lambda d: d.accept())

    # bob and carol are alice's contacts (made through their real peers), not each other's.
    peers = {name: ui.bridge.peer for name, ui in uis.items()}
    assert all(peers.values())
    for name in ("bob", "carol"):
        await peers["alice"].add_contact(name)
        await peers[name].accept_contact(peers["alice"].me.user_id)
        await expect(contact(a, name)).to_be_visible(timeout=TIMEOUT_MS)

    # alice makes the group from her contacts.
    await a.click("#new-group-btn")
    await a.fill("#new-group-name", "climbing")
    await a.check('[aria-label="Add bob to the group"]')
    await a.check('[aria-label="Add carol to the group"]')
    await a.click("#new-group-create")
    await expect(a.locator("#conv-name")).to_have_text("climbing", timeout=TIMEOUT_MS)
    await expect(group(a, "climbing")).to_contain_text("3 members · admin")
    for page in (b, c):  # the group appears for its members without a reload
        await expect(group(page, "climbing")).to_be_visible(timeout=TIMEOUT_MS)
        await group(page, "climbing").click()
        await expect(page.locator("#conv-name")).to_have_text("climbing")
        await expect(page.locator("#group-btn")).to_be_visible()
        await expect(page.locator("#safety-btn")).to_be_hidden()

    # Everyone writes; everyone sees who wrote what (carol sees bob's name though he is no contact).
    await write(a, "Rope at 6?")
    for page in (b, c):
        await expect(said(page, "Rope at 6?").locator(".sender")).to_have_text("alice", timeout=TIMEOUT_MS)
    # Both have the group open: alice's message rolls up to read by both.
    rollup = said(a, "Rope at 6?", "out").locator(".rollup")
    await expect(rollup).to_have_text("read by 2 of 2", timeout=TIMEOUT_MS)

    # bob types: alice and carol see it is bob.
    await b.click("#message-input")
    await b.keyboard.type("I bring the quickdraws", delay=20)
    for page in (a, c):
        await expect(page.locator("#typing")).to_have_text("bob is typing…", timeout=TIMEOUT_MS)
    await b.press("#message-input", "Enter")
    await write(c, "I will be late")
    for page in (a, c):
        await expect(said(page, "quickdraws").locator(".sender")).to_have_text("bob", timeout=TIMEOUT_MS)
    for page in (a, b):
        await expect(said(page, "I will be late").locator(".sender")).to_have_text(
            "carol", timeout=TIMEOUT_MS
        )
    await alice.shot("group-01-conversation")

    # alice edits her message: both members' pages show the new text, marked "edited"; carol is
    # offered neither edit nor delete for everyone on alice's message.
    await said(a, "Rope at 6?", "out").locator(".msg-actions").click()
    await a.fill("#edit-text", "Rope at 7?")
    await a.click("#edit-save")
    for page in (b, c):
        await expect(said(page, "Rope at 7?").locator(".edited")).to_be_visible(timeout=TIMEOUT_MS)
    await said(c, "Rope at 7?").locator(".msg-actions").click()
    await expect(c.locator("#edit-save")).to_be_hidden()
    await expect(c.locator("#delete-everyone")).to_be_hidden()
    await c.keyboard.press("Escape")

    # A file in the group: both members get it; bob downloads the same bytes.
    original = os.urandom(200_000)
    source = tmp_path / "topo.bin"
    source.write_bytes(original)
    await a.set_input_files("#file-input", str(source))
    for page in (b, c):
        await expect(said(page, "topo.bin").locator("a.download")).to_be_visible(timeout=30_000)
        await expect(said(page, "topo.bin").locator(".sender")).to_have_text("alice")
    async with b.expect_download() as info:
        await said(b, "topo.bin").locator("a.download").click()
    saved = tmp_path / "downloaded.bin"
    await (await info.value).save_as(saved)
    assert saved.read_bytes() == original

    # The member list marks the admin; alice renames the group and the others' headers follow.
    await a.click("#group-btn")
    members = a.locator("#group-members")
    await expect(members.locator('[data-user="alice"] .badge.admin')).to_be_visible(timeout=TIMEOUT_MS)
    await expect(members.locator('[data-user="bob"] .badge.admin')).to_have_count(0)
    await expect(members.locator(".member")).to_have_count(3)
    await alice.shot("group-02-members")
    await a.fill("#group-rename", "crag crew")
    await a.click("#group-rename-save")
    for page in (a, b, c):
        await expect(page.locator("#conv-name")).to_have_text("crag crew", timeout=TIMEOUT_MS)
        await expect(group(page, "crag crew")).to_be_visible()

    # alice removes carol: every timeline says so; carol's page says she is out and cannot write.
    await a.click('[aria-label="Remove carol"]')
    await expect(members.locator(".member")).to_have_count(2, timeout=TIMEOUT_MS)
    await a.keyboard.press("Escape")
    for page in (a, b):
        line = page.locator("#messages .msg.system", has_text="alice removed carol")
        await expect(line).to_be_visible(timeout=TIMEOUT_MS)
    # carol's device learns the removal itself from the signed record in its frame (her timeline
    # says who did it) and is refused the chain from then on: her page says she is out, and shows
    # no one's names as members any more.
    await expect(c.locator("#messages .msg.system", has_text="alice removed you")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    await expect(c.locator("#group-out")).to_contain_text("no longer a member", timeout=TIMEOUT_MS)
    await expect(c.locator("#conv-status")).to_have_text("you are not a member")
    await expect(c.locator("#message-input")).to_be_disabled()
    await expect(c.locator("#send-btn")).to_be_disabled()
    await expect(group(c, "crag crew")).to_contain_text("you are not a member")
    await carol.shot("group-03-removed")

    # What alice says now goes to bob alone.
    await write(a, "Just us two then")
    await expect(said(b, "Just us two then").locator(".sender")).to_have_text("alice", timeout=TIMEOUT_MS)
    await expect(said(a, "Just us two then", "out").locator(".rollup")).to_have_text(
        "read by 1 of 1", timeout=TIMEOUT_MS
    )

    # alice adds carol back from her contacts: carol's page lets her write again (she cannot read
    # what was said while she was out); then bob leaves, and alice's timeline says so.
    await a.click("#group-btn")
    await a.select_option("#group-add-select", label="carol")
    await a.click("#group-add-btn")
    await expect(members.locator(".member")).to_have_count(3, timeout=TIMEOUT_MS)
    await a.keyboard.press("Escape")
    await expect(c.locator("#group-out")).to_be_hidden(timeout=TIMEOUT_MS)
    await expect(c.locator("#message-input")).to_be_enabled()
    await write(c, "Back in")
    await expect(said(a, "Back in").locator(".sender")).to_have_text("carol", timeout=TIMEOUT_MS)
    await expect(said(c, "Just us two then")).to_have_count(0)
    await b.click("#group-btn")
    await b.click("#group-leave")
    await expect(b.locator("#group-out")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(a.locator("#messages .msg.system", has_text="bob left")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(group(a, "crag crew")).to_contain_text("2 members")

    for window in windows.values():
        window.assert_clean()
