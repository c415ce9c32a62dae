"""Fixtures of the security tests: both transports, hostile sockets, a health check.

The end-to-end machinery (a real server on 127.0.0.1, chat and raw clients) lives in
``tests/app/conftest.py``. pytest loads a conftest only for the tests below it and
refuses ``pytest_plugins`` outside the root conftest, so this file loads that module by
path under the name pytest itself gives it (``tests.app.conftest``): whichever of the
two loads it first, both use one module object, and its classes are re-exported here.

Tests take ``e2e`` (parametrized over both transports through ``transport``; a test
pins one with ``@pytest.mark.parametrize("transport", ["lean"])``) and ``hostile``
(hand-built frames, raw sockets past the handshake, the health check every attack
ends with). Type-check-only imports name this file ``tests.security.conftest``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final


def _load_app_conftest() -> None:
    name = "tests.app.conftest"
    if name in sys.modules:
        return
    path = Path(__file__).resolve().parents[1] / "app" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load_app_conftest()

import attrs  # noqa: E402 - after the loader above, like the import that needs it
import pytest  # noqa: E402 - idem
import trio  # noqa: E402 - idem
import wsproto  # noqa: E402 - idem
import wsproto.events as wse  # noqa: E402 - idem

from tests.app.conftest import (  # noqa: E402 - resolvable only once the loader ran
    E2E,
    WAIT_S,
    Chat,
    Endpoint,
    HttpResponse,
    LiveServer,
    RawClient,
    Rejection,
)

__all__ = [
    "E2E",
    "TRANSPORTS",
    "WAIT_S",
    "Chat",
    "Endpoint",
    "Hostile",
    "HttpResponse",
    "LiveServer",
    "RawClient",
    "Rejection",
    "Reply",
    "Wire",
    "frame",
]

#: Every server-side transport; ``e2e`` runs each test once per entry.
TRANSPORTS: Final = ("lean", "asgi")
#: The WebSocket key of hand-written upgrades (RFC 6455's example).
KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="
#: Close codes a client may cause; 1011 (a server bug) is never among them.
CLIENT_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009})


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One client frame built by hand, including the ones a correct library refuses to send.

    ``rsv`` is the three reserved bits as a number (4 = RSV1, 2 = RSV2, 1 = RSV3).
    """
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65_536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = b"\x11\x22\x33\x44"
    masked = int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + masked.to_bytes(n, "big")


def upgrade_request(
    *headers: str, target: str = "/ws", method: str = "GET", websocket: bool = True
) -> bytes:
    """A hand-written HTTP/1.1 request; ``websocket`` adds a well-formed upgrade's headers."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if websocket:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
        ]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@attrs.frozen
class Reply:
    """What came back for a hand-written request: a status (None: no response at all)."""

    status: int | None
    headers: dict[str, str]  # names lower-case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(host: str, port: int, request: bytes) -> Reply:
    """Send ``request`` as is and read the response head and its body.

    A server may reset the connection while a huge request is still being written or
    before answering: then ``status`` is None. Never waits longer than ``WAIT_S``.
    """
    data = b""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            # Refused mid-request: whatever answer was sent is still readable.
            with suppress(trio.BrokenResourceError):
                await stream.send_all(request)
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    if lines[0].split(" ")[1] == "101" or len(body) >= length:
                        return Reply(int(lines[0].split(" ")[1]), headers, body[:length])
                try:
                    chunk = await stream.receive_some(65_536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    return Reply(None, {}, data)
                data += chunk


@attrs.define
class Wire:
    """A WebSocket connection past the handshake on which the test writes raw bytes.

    Server frames are parsed with wsproto and kept in ``events``; pings are never
    answered and nothing is read unless a method says so.
    """

    client: RawClient

    @property
    def events(self) -> list[wse.Event]:
        return self.client.events

    @property
    def closes(self) -> list[tuple[int, str | None]]:
        return self.client.closes

    @property
    def eof(self) -> bool:
        return self.client.eof

    def texts(self) -> list[dict[str, Any]]:
        """Every text frame received so far, parsed (``connection_ready`` included)."""
        return [json.loads(e.data) for e in self.events if isinstance(e, wse.TextMessage)]

    async def send(self, data: bytes) -> None:
        """Write ``data`` as is; a peer that already hung up is not an error here."""
        with suppress(trio.BrokenResourceError):
            await self.client.stream.send_all(data)

    async def send_text(self, text: str) -> None:
        await self.send(frame(0x1, text.encode()))

    async def _read_once(self) -> bool:
        """One read into ``events``; False at EOF or reset."""
        try:
            data = await self.client.stream.receive_some(65_536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.client.eof = True
            return False
        self.client.conn.receive_data(data)
        self.events.extend(self.client.conn.events())
        return True

    async def read_until(self, done: Callable[[Wire], bool], wait_s: float = WAIT_S) -> None:
        """Read until ``done(self)``; fails after ``wait_s`` (EOF first also fails)."""
        self.events.extend(self.client.conn.events())
        with trio.fail_after(wait_s):
            while not done(self):
                assert await self._read_once(), f"EOF before the condition; got {self.events}"

    async def finish(self, wait_s: float = WAIT_S) -> None:
        """Read until the server's close frame, or until the server drops the connection."""
        self.events.extend(self.client.conn.events())
        with trio.fail_after(wait_s):
            while not self.closes and await self._read_once():
                pass

    async def reply_to(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a JSON message; return the next text frame after those already read."""
        seen = len(self.texts())
        await self.send_text(json.dumps(message))
        await self.read_until(lambda wire: len(wire.texts()) > seen)
        return self.texts()[seen]


@attrs.frozen
class Hostile:
    """Helpers of hostile tests for one transport (``e2e.transport``)."""

    transport: str

    #: :func:`frame` and :func:`upgrade_request`, for test modules (which reach this
    #: file through fixtures only).
    frame = staticmethod(frame)
    upgrade_request = staticmethod(upgrade_request)

    @asynccontextmanager
    async def wire(
        self,
        live: Endpoint,
        token: str,
        *,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
    ) -> AsyncIterator[Wire]:
        """A :class:`Wire` whose ``connection_ready`` was read, ready for hostile bytes."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        with trio.fail_after(WAIT_S):
            await sock.connect((live.host, live.port))
        stream = trio.SocketStream(sock)
        async with stream:
            conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            host = f"{live.host}:{live.port}"
            headers = [(b"authorization", f"Bearer {token}".encode())]
            await stream.send_all(
                conn.send(wse.Request(host=host, target=live.path, extra_headers=headers))
            )
            accepted: wse.AcceptConnection | None = None
            events: list[wse.Event] = []
            with trio.fail_after(WAIT_S):
                while accepted is None:
                    data = await stream.receive_some(65_536)
                    assert data, "server closed during the handshake"
                    conn.receive_data(data)
                    for event in conn.events():
                        if accepted is None:
                            assert isinstance(event, wse.AcceptConnection), event
                            accepted = event
                        else:
                            events.append(event)
            wire = Wire(RawClient(stream, conn, accepted, events))
            await wire.read_until(lambda w: bool(w.texts()))
            assert wire.texts()[0]["type"] == "connection_ready"
            yield wire

    async def healthy(self, live: Endpoint, token: str | None = None) -> None:
        """A fresh, well-behaved client still completes a chat turn on ``live``.

        ``token`` defaults to one of ``e2e``'s shared secret (pass one for a JWKS server).
        """
        async with live.chat(token or live.e2e.token("bystander")) as chat:
            events = await chat.run_to_end("are you still there")
        assert events[-1]["type"] == "agent_completed", events

    @staticmethod
    def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
        """ERROR records of the server's loggers (internal errors, Hypercorn, Quart)."""
        return [
            record.getMessage()
            for record in caplog.records
            if record.levelno >= logging.ERROR and record.name.startswith("trio_enclave")
        ]

    async def exchange(self, live: Endpoint, request: bytes) -> Reply:
        return await exchange(live.host, live.port, request)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def e2e(transport: str) -> E2E:
    return E2E(transport=transport)


@pytest.fixture
def hostile(transport: str) -> Hostile:
    return Hostile(transport)
