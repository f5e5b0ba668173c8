"""bench/peers.py's XMPP client against a real Prosody: the comparison is only worth something if
the client really logs in and really carries messages, live and through mod_offline.

Skipped, with one line, only where Debian's prosody is not installed (scripts/bootstrap.sh --test
installs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench import prosody
from bench.xmpp import XmppClient, XmppError, body_of

pytestmark = pytest.mark.skipif(
    not prosody.available(), reason="prosody is not installed (scripts/bootstrap.sh --test installs it)"
)
PASSWORD = "test-password"


@pytest.fixture(scope="module")
def server() -> Iterator[prosody.RunningProsody]:
    with prosody.RunningProsody() as running:
        yield running


async def login(server: prosody.RunningProsody, name: str, **kw: object) -> XmppClient:
    return await XmppClient.login("127.0.0.1", server.port, server.domain, name, PASSWORD, **kw)


async def next_message(client: XmppClient) -> object:
    async with asyncio.timeout(10):
        return await anext(client.incoming())


async def test_client_registers_logs_in_and_exchanges_a_message(server: prosody.RunningProsody) -> None:
    alice = await login(server, "alice", register=True)
    bob = await login(server, "bob", register=True)
    try:
        assert alice.jid.startswith(f"alice@{server.domain}/")
        await alice.message(f"bob@{server.domain}", "hello <bob> & co", "m-1")
        got = await next_message(bob)
        assert got.get("id") == "m-1"
        assert got.get("from", "").startswith(f"alice@{server.domain}/")
        assert body_of(got) == "hello <bob> & co"
    finally:
        await alice.close()
        await bob.close()


async def test_messages_to_an_away_user_are_kept_by_mod_offline_and_delivered_on_login(
    server: prosody.RunningProsody,
) -> None:
    await (await login(server, "carol", register=True, available=False)).close()
    dave = await login(server, "dave", register=True)
    try:
        for i in range(5):
            await dave.message(f"carol@{server.domain}", f"note {i}", f"o-{i}")
        await dave.ping()  # handled in order: the five are stored when this is answered
        assert server.offline_stored("carol") == 5
        carol = await login(server, "carol")
        try:
            ids = [(await next_message(carol)).get("id") for _ in range(5)]
        finally:
            await carol.close()
        assert ids == [f"o-{i}" for i in range(5)]
    finally:
        await dave.close()


async def test_a_wrong_password_is_refused_with_a_clear_error(server: prosody.RunningProsody) -> None:
    await (await login(server, "erin", register=True)).close()
    with pytest.raises(XmppError, match="SASL PLAIN for erin failed"):
        await XmppClient.login("127.0.0.1", server.port, server.domain, "erin", "not-the-password")
