"""Bare clients of a server process: a chat.v1 WebSocket client and a plain HTTP GET.

wsproto over plain Trio sockets, not trio-websocket: the client sees the close frame
exactly as sent, tells a missing one apart (1006), answers pings, and never leaks a
socket on a refused handshake. Every wait is bounded by :data:`WAIT_S`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, Final

import attrs
import h11
import trio
import wsproto
import wsproto.events as wse
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError

from tests.security._procs import token

__all__ = [
    "ABNORMAL",
    "TERMINAL_TYPES",
    "WAIT_S",
    "Closed",
    "HttpResponse",
    "Rejected",
    "WsClient",
    "connect",
    "connect_with_backoff",
    "http_get",
]

TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})
#: Close code a client reports when the connection ended without a close frame.
ABNORMAL: Final = 1006
#: Bound on one client wait (a frame, a handshake), seconds (generous: a loaded machine).
WAIT_S: Final = 15.0


# -- plain HTTP -------------------------------------------------------------------------


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_get(host: str, port: int, target: str) -> HttpResponse:
    """One HTTP/1.1 GET on a fresh connection, read to the end of the response (h11)."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET", target=target, headers=[("Host", f"{host}:{port}"), ("Connection", "close")]
    )
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65_536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    assert response is not None, "no HTTP response"
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers}
    return HttpResponse(response.status_code, headers, body)


# -- a WebSocket client -----------------------------------------------------------------


class Closed(Exception):
    """The connection ended: ``code`` is the server's close code, 1006 without a frame."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Rejected(Exception):
    """The server refused the opening handshake with an HTTP response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status, body)
        self.status = status
        self.headers = headers
        self.body = body


@attrs.define(eq=False)
class WsClient:
    """A chat.v1 client on wsproto: answers pings, records every frame it read.

    One task reads (``recv`` and the methods built on it); any task may send.
    """

    stream: trio.SocketStream
    conn: wsproto.WSConnection
    events: deque[wse.Event] = attrs.field(factory=deque)
    frames: list[dict[str, Any]] = attrs.field(factory=list)
    started: dict[str, str] = attrs.field(factory=dict)  # client_id -> run_id
    terminals: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # run_id -> event
    closed: Closed | None = None
    _sent: int = 0
    _parts: list[str] = attrs.field(factory=list)
    _sending: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one JSON message. Raises :class:`Closed` if the connection is gone."""
        if self.closed is not None:
            raise self.closed
        try:
            async with self._sending:  # the reader answers pings on the same stream
                await self.stream.send_all(self.conn.send(wse.Message(data=json.dumps(message))))
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
            # The server went away under us; what it sent (a close frame?) is still to read.
            await self._until_closed()
            raise self.closed or Closed(ABNORMAL, None) from None

    async def recv(self) -> dict[str, Any]:
        """The next JSON frame. Raises :class:`Closed` once the connection ended."""
        with trio.fail_after(WAIT_S):
            while True:
                if self.closed is not None:
                    raise self.closed
                while self.events:
                    frame = await self._handle(self.events.popleft())
                    if frame is not None:
                        self._record(frame)
                        return frame
                    if self.closed is not None:
                        raise self.closed
                await self._read()

    async def expect(self, kind: str) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == kind, frame
        return frame

    async def start(self, text: str) -> str:
        """Send a ``user_message``; return its run_id (from its ``agent_started``).

        Frames of other runs read meanwhile are kept; :meth:`until_terminal` finds them.
        """
        self._sent += 1
        client_id = f"c{self._sent}"
        await self.send({"type": "user_message", "text": text, "client_id": client_id})
        while client_id not in self.started:
            frame = await self.recv()
            assert frame.get("ref") != client_id, frame  # refused: error about this message
        return self.started[client_id]

    async def until_terminal(self, run_id: str) -> dict[str, Any]:
        """``run_id``'s terminal event, reading on (frames kept) until it has come."""
        while run_id not in self.terminals:
            await self.recv()
        return self.terminals[run_id]

    async def run(self, text: str = "hello big world") -> dict[str, Any]:
        """One whole run; returns its terminal event."""
        return await self.until_terminal(await self.start(text))

    async def runs(self, count: int, text: str = "hello big world") -> list[dict[str, Any]]:
        """``count`` runs at once; their terminal events. (One task reads: no gather.)"""
        run_ids = [await self.start(text) for _ in range(count)]
        return [await self.until_terminal(run_id) for run_id in run_ids]

    async def wait_closed(self) -> Closed:
        """Read (frames kept) until the connection ends; returns how it ended."""
        with trio.fail_after(WAIT_S):
            await self._until_closed()
        assert self.closed is not None
        return self.closed

    def _record(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        if frame["type"] == "agent_started" and "client_id" in frame:
            self.started[frame["client_id"]] = frame["run_id"]
        elif frame["type"] in TERMINAL_TYPES:
            self.terminals[frame["run_id"]] = frame

    async def _until_closed(self) -> None:
        while self.closed is None:
            try:
                await self.recv()
            except Closed:
                return

    async def _handle(self, event: wse.Event) -> dict[str, Any] | None:
        if isinstance(event, wse.TextMessage):
            self._parts.append(event.data)
            if event.message_finished:
                text, self._parts = "".join(self._parts), []
                parsed: dict[str, Any] = json.loads(text)
                return parsed
        elif isinstance(event, wse.Ping):
            # A ping that crossed our close frame is not answered: wsproto refuses to.
            if self.conn.state is ConnectionState.OPEN:
                await self._send_quietly(self.conn.send(event.response()))
        elif isinstance(event, wse.CloseConnection):
            self.closed = Closed(event.code, event.reason)
            if self.conn.state is ConnectionState.REMOTE_CLOSING:
                await self._send_quietly(self.conn.send(event.response()))
            await self.stream.aclose()
        elif isinstance(event, wse.BytesMessage):  # pragma: no cover - chat.v1 is text only
            raise AssertionError("the server sent a binary frame")
        return None

    async def _read(self) -> None:
        try:
            data = await self.stream.receive_some(65_536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = Closed(ABNORMAL, None)
            await self.stream.aclose()
            return
        self.conn.receive_data(data)
        self.events.extend(self.conn.events())

    async def _send_quietly(self, data: bytes) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with self._sending:
                await self.stream.send_all(data)

    async def aclose(self) -> None:
        """Close 1000 and wait (bounded) for the server's answer; the socket is closed."""
        if self.closed is None and self.conn.state is ConnectionState.OPEN:
            await self._send_quietly(self.conn.send(wse.CloseConnection(code=1000)))
            with trio.move_on_after(5):
                await self._until_closed()
        await self.stream.aclose()


async def connect(port: int, sub: str, *, host: str = "127.0.0.1") -> WsClient:
    """A client past the handshake whose ``connection_ready`` has been read.

    Raises :class:`Rejected` when the server answers the upgrade with an HTTP
    error, :class:`Closed` when it hangs up first, OSError when nobody listens.
    Cancellation: the socket is closed; nothing is left open.
    """
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = wse.Request(
        host=f"{host}:{port}",
        target="/ws",
        extra_headers=[(b"authorization", f"Bearer {token(sub)}".encode())],
    )
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, port)
    try:
        client = await _handshake(stream, conn, request)
        await client.expect("connection_ready")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return client


async def _handshake(
    stream: trio.SocketStream, conn: wsproto.WSConnection, request: wse.Request
) -> WsClient:
    rejected: wse.RejectConnection | None = None
    body = b""
    with trio.fail_after(WAIT_S):
        await stream.send_all(conn.send(request))
        while True:
            try:
                data = await stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data and rejected is None:
                raise Closed(ABNORMAL, None)
            conn.receive_data(data or None)
            events = deque(conn.events())
            while events:
                event = events.popleft()
                if isinstance(event, wse.AcceptConnection):
                    return WsClient(stream, conn, events)
                if isinstance(event, wse.RejectConnection):
                    rejected = event
                    if not event.has_body:
                        break
                elif isinstance(event, wse.RejectData):
                    body += event.data
                    if event.body_finished:
                        break
            else:
                if data:
                    continue
            assert rejected is not None
            headers = {k.decode().lower(): v.decode() for k, v in rejected.headers}
            raise Rejected(rejected.status_code, headers, body)


async def connect_with_backoff(
    port: int, sub: str, *, attempts: int = 40, first_s: float = 0.05, max_s: float = 1.0
) -> tuple[WsClient, int]:
    """What a client should do after a 1006 or 503: retry with exponential backoff.

    Returns the client and the number of failed attempts before it; re-raises the
    last error after ``attempts``. (A real client also adds jitter.) Cancellation:
    stops retrying; no socket is left open.
    """
    delay = first_s
    for failed in range(attempts):
        try:
            return await connect(port, sub), failed
        except (OSError, Closed, Rejected, trio.TooSlowError):
            if failed == attempts - 1:
                raise
        await trio.sleep(delay)
        delay = min(delay * 2, max_s)
    raise AssertionError("unreachable")  # pragma: no cover
