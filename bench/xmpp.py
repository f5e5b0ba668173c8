"""A lean asyncio XMPP client for benchmarks: raw stanzas over one TCP connection, no library.

Just enough of RFC 6120/6121 to drive a real server the way a chat client does: open the stream,
optionally register in band (XEP-0077), SASL PLAIN (loopback only: the benchmark's server allows it
without TLS), restart the stream, bind a resource, send initial presence, then send and receive
`<message/>` stanzas. Incoming stanzas are parsed by expat (`xml.etree.ElementTree.XMLPullParser`)
and handed out as elements; `ping()` (XEP-0199) is a barrier: the server handles a connection's
stanzas in order, so its answer comes after everything sent before it was handled.

It must never be pointed at anything but a server the benchmark started on 127.0.0.1: it sends the
password in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from typing import Self
from xml.etree.ElementTree import Element, XMLPullParser
from xml.sax.saxutils import escape, quoteattr

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_REGISTER = "jabber:iq:register"
NS_PING = "urn:xmpp:ping"


class XmppError(Exception):
    """The server refused a step (registration, authentication, bind) or the stream broke."""


def _tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class XmppClient:
    """One client stream. `async with XmppClient.login(...)` gives a bound, available session."""

    def __init__(self, host: str, port: int, domain: str) -> None:
        self.host = host
        self.port = port
        self.domain = domain
        self.jid = ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser: XMLPullParser | None = None
        self._depth = 0
        self._root: Element | None = None
        self._stanzas: asyncio.Queue[Element | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Element]] = {}
        self.messages: asyncio.Queue[Element | None] = asyncio.Queue()

    # -- the stream ----------------------------------------------------------------------------------

    @classmethod
    async def login(
        cls,
        host: str,
        port: int,
        domain: str,
        username: str,
        password: str,
        *,
        register: bool = False,
        resource: str = "bench",
        available: bool = True,
        deadline: float = 10.0,
    ) -> Self:
        client = cls(host, port, domain)
        try:
            async with asyncio.timeout(deadline):
                await client._connect()
                if register:
                    await client._register(username, password)
                await client._authenticate(username, password)
                await client._bind(resource)
                if available:
                    await client.send("<presence/>")
        except BaseException:
            await client.close()
            raise
        client._pump = asyncio.create_task(client._dispatch(), name=f"xmpp-{username}")
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await self._open_stream()

    async def _open_stream(self) -> Element:
        """Send a stream header, read the server's and its `<stream:features/>`."""
        self._parser = XMLPullParser(events=("start", "end"))
        self._depth = 0
        await self.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
            f" xmlns:stream='{NS_STREAM}' to={quoteattr(self.domain)} version='1.0'>"
        )
        features = await self._next()
        if features.tag != _tag(NS_STREAM, "features"):
            raise XmppError(f"expected stream features, got {features.tag}")
        return features

    async def _next(self) -> Element:
        """The next top-level stanza, reading from the socket (only before the pump runs)."""
        while self._stanzas.empty():
            await self._read_some()
        stanza = await self._stanzas.get()
        if stanza is None:
            raise XmppError("the server closed the stream")
        return stanza

    async def _read_some(self) -> None:
        assert self._reader is not None and self._parser is not None
        data = await self._reader.read(65536)
        if not data:
            self._stanzas.put_nowait(None)
            return
        self._parser.feed(data)
        for event, elem in self._parser.read_events():
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = elem
            else:
                self._depth -= 1
                if self._depth == 1:
                    self._stanzas.put_nowait(elem)
                    if self._root is not None:
                        self._root.clear()  # the stream root would otherwise keep every stanza
                elif self._depth == 0:  # </stream:stream>
                    self._stanzas.put_nowait(None)

    async def _register(self, username: str, password: str) -> None:
        answer = await self._iq_before_pump(
            f"<iq type='set' id='reg'><query xmlns='{NS_REGISTER}'><username>{escape(username)}</username>"
            f"<password>{escape(password)}</password></query></iq>"
        )
        if answer.get("type") != "result":
            raise XmppError(f"in-band registration of {username} refused: {_describe(answer)}")

    async def _authenticate(self, username: str, password: str) -> None:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        answer = await self._next()
        if answer.tag != _tag(NS_SASL, "success"):
            raise XmppError(f"SASL PLAIN for {username} failed: {_describe(answer)}")
        await self._open_stream()  # RFC 6120 6.4.6: a new stream after SASL

    async def _bind(self, resource: str) -> None:
        answer = await self._iq_before_pump(
            f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{escape(resource)}</resource>"
            "</bind></iq>"
        )
        jid = answer.find(f"{_tag(NS_BIND, 'bind')}/{_tag(NS_BIND, 'jid')}")
        if answer.get("type") != "result" or jid is None or not jid.text:
            raise XmppError(f"resource bind failed: {_describe(answer)}")
        self.jid = jid.text

    async def _iq_before_pump(self, text: str) -> Element:
        await self.send(text)
        while True:
            stanza = await self._next()
            if stanza.tag == _tag(NS_CLIENT, "iq"):
                return stanza

    # -- after login: one task reads, callers send ---------------------------------------------------

    async def _dispatch(self) -> None:
        """Reads stanzas: iq answers resolve their waiter, messages go to `messages`."""
        try:
            while True:
                while not self._stanzas.empty():
                    stanza = self._stanzas.get_nowait()
                    if stanza is None:
                        return
                    if stanza.tag == _tag(NS_CLIENT, "message"):
                        self.messages.put_nowait(stanza)
                    elif stanza.tag == _tag(NS_CLIENT, "iq"):
                        waiter = self._waiting.pop(stanza.get("id", ""), None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(stanza)
                await self._read_some()
        except (ConnectionError, OSError):
            return
        finally:
            self.messages.put_nowait(None)
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(XmppError("the stream ended before the answer"))

    async def send(self, text: str) -> None:
        """Write raw XML and wait for the socket's buffer to drain (back-pressure)."""
        if self._writer is None or self._writer.is_closing():
            raise ConnectionResetError("the XMPP stream is closed")
        self._writer.write(text.encode())
        await self._writer.drain()

    async def message(self, to: str, body: str, message_id: str) -> None:
        await self.send(
            f"<message to={quoteattr(to)} id={quoteattr(message_id)} type='chat'><body>{escape(body)}</body>"
            "</message>"
        )

    async def ping(self, deadline: float = 30.0) -> None:
        """XEP-0199 to the server; returns when it answered (after handling all earlier stanzas)."""
        iq_id = f"p{next(self._ids)}"
        waiter: asyncio.Future[Element] = asyncio.get_running_loop().create_future()
        self._waiting[iq_id] = waiter
        to = quoteattr(self.domain)
        await self.send(f"<iq type='get' id='{iq_id}' to={to}><ping xmlns='{NS_PING}'/></iq>")
        async with asyncio.timeout(deadline):
            answer = await waiter
        if answer.get("type") != "result":
            raise XmppError(f"ping refused: {_describe(answer)}")

    async def incoming(self) -> AsyncIterator[Element]:
        """Message stanzas as they arrive, until the stream ends."""
        while True:
            stanza = await self.messages.get()
            if stanza is None:
                return
            yield stanza

    def __aiter__(self) -> AsyncIterator[Element]:
        return self.incoming()

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                self._writer.write(b"</stream:stream>")
                await asyncio.wait_for(self._writer.drain(), 2.0)
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None


def body_of(stanza: Element) -> str | None:
    body = stanza.find(_tag(NS_CLIENT, "body"))
    return None if body is None else body.text


def _describe(stanza: Element) -> str:
    children = [child.tag.rpartition("}")[2] for child in stanza.iter() if child is not stanza]
    name = stanza.tag.rpartition("}")[2]
    return f"<{name} type={stanza.get('type')!r}> with {', '.join(children) or 'nothing'}"
