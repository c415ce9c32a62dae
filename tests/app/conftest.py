"""Shared fixtures of the end-to-end tests: a real server on 127.0.0.1 and its clients.

Tests take the ``e2e`` fixture (an :class:`E2E`) and use it for everything:

    async with e2e.server(max_runs=1) as live:          # serve() on an ephemeral port
        async with live.chat(e2e.token("alice")) as chat:  # trio-websocket, connection_ready read
            events = await chat.run_to_end("hello")

Under ``--import-mode=importlib`` test modules cannot import this file at run time, so
they reach everything through the fixture and import these names for type checking only
(``if TYPE_CHECKING: from tests.app.conftest import ...``, the name mypy gives this
file). Every wait here is bounded (``WAIT_S``); wrap a call in ``trio.fail_after`` for a
tighter bound.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import h11
import pytest
import trio
import wsproto
import wsproto.events as wse
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto.utilities import LocalProtocolError

from app import RunningServer, Services, Settings, mint_token, serve

__all__ = [
    "E2E",
    "Chat",
    "Endpoint",
    "HttpResponse",
    "LiveServer",
    "RawClient",
    "Rejection",
]

SECRET: Final = b"e2e-test-secret-0123456789abcdefghij"
#: Default bound on any single wait of a client, seconds.
WAIT_S: Final = 5.0
TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})

Frame = dict[str, Any]


# -- plain HTTP ------------------------------------------------------------------


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_get(host: str, port: int, target: str) -> HttpResponse:
    """One HTTP/1.1 GET over a fresh TCP connection, parsed with h11.

    Reads up to the end of the response message: Hypercorn's trio worker does not
    close the connection promptly after a ``Connection: close`` response. A connection
    closed before any response raises ``ConnectionResetError``.
    """
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[("Host", f"{host}:{port}"), ("Connection", "close")],
    )
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if response is not None:
                        raise
                    # Closed with the request unanswered (say, by a worker that died
                    # holding it): for the caller, a reset connection like any other.
                    raise ConnectionResetError("closed before any response") from exc
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


# -- a chat client over trio-websocket -------------------------------------------


@attrs.define
class Chat:
    """A chat.v1 client: JSON in and out, every frame kept (``raw`` and ``frames``)."""

    ws: WebSocketConnection
    raw: list[str] = attrs.field(factory=list)
    frames: list[Frame] = attrs.field(factory=list)

    @property
    def ready(self) -> Frame:
        assert self.frames, "connection_ready was not read"
        assert self.frames[0]["type"] == "connection_ready", self.frames[0]
        return self.frames[0]

    async def send(self, message: Mapping[str, Any] | str | bytes) -> None:
        if isinstance(message, Mapping):
            message = json.dumps(message)
        await self.ws.send_message(message)

    async def _next(self) -> Frame:
        text = await self.ws.get_message()
        assert isinstance(text, str), f"server sent a binary frame: {text!r}"
        self.raw.append(text)
        self.frames.append(json.loads(text))
        return self.frames[-1]

    async def recv_text(self) -> str:
        """The next frame's text, exactly as sent (also parsed into ``frames``)."""
        with trio.fail_after(WAIT_S):
            await self._next()
        return self.raw[-1]

    async def recv(self) -> Frame:
        with trio.fail_after(WAIT_S):
            return await self._next()

    async def expect(self, kind: str) -> Frame:
        frame = await self.recv()
        assert frame["type"] == kind, frame
        return frame

    async def start(self, text: str = "hello big world", **fields: Any) -> Frame:
        """Send a user_message and return its ``agent_started``."""
        await self.send({"type": "user_message", "text": text, **fields})
        return await self.expect("agent_started")

    async def run_until_terminal(self, run_id: str) -> list[Frame]:
        """Frames up to and including ``run_id``'s terminal event (other frames included)."""
        out: list[Frame] = []
        with trio.fail_after(WAIT_S):
            while True:
                frame = await self._next()
                out.append(frame)
                if frame.get("run_id") == run_id and frame["type"] in TERMINAL_TYPES:
                    return out

    async def run_to_end(self, text: str = "hello big world", **fields: Any) -> list[Frame]:
        """One whole run: ``agent_started`` up to its terminal event."""
        started = await self.start(text, **fields)
        return [started, *await self.run_until_terminal(started["run_id"])]

    async def roundtrip(self) -> None:
        """A ping/pong barrier: everything the server sent before the pong is in ``frames``."""
        await self.send({"type": "ping"})
        with trio.fail_after(WAIT_S):
            while (await self._next())["type"] != "pong":
                pass

    async def closed(self) -> tuple[int, str | None]:
        """Read until the server closes; return the close code and reason it sent."""
        reason = None
        with trio.fail_after(WAIT_S):
            while reason is None:
                try:
                    await self._next()
                except ConnectionClosed as exc:
                    reason = exc.reason
                    if reason is None:  # pragma: no cover - trio-websocket always sets it
                        raise
        return reason.code, reason.reason


@attrs.frozen
class Rejection:
    """A refused handshake, as the client saw it."""

    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# -- a raw client: wsproto over a socket we read only when we choose --------------


@attrs.define
class RawClient:
    """A WebSocket client that never reads (nor answers pings) unless told to."""

    stream: trio.SocketStream
    conn: wsproto.WSConnection
    accepted: wse.AcceptConnection
    events: list[wse.Event] = attrs.field(factory=list)
    eof: bool = False

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(wse.Message(data=text)))

    @property
    def closes(self) -> list[tuple[int, str | None]]:
        """(code, reason) of every close frame received so far."""
        return [(e.code, e.reason) for e in self.events if isinstance(e, wse.CloseConnection)]

    async def drain(self) -> None:
        """Read into ``events`` until EOF or a reset (``eof``) or a close frame.

        Pings and the close frame are not answered. Unbounded: wrap it in
        ``trio.move_on_after``; what arrived meanwhile stays in ``events``.
        """
        self.events.extend(self.conn.events())
        while not self.closes:
            try:
                data = await self.stream.receive_some(65_536)
            except trio.BrokenResourceError:  # reset by the peer
                data = b""
            if not data:
                self.eof = True
                return
            self.conn.receive_data(data)
            self.events.extend(self.conn.events())


async def open_raw_client(
    host: str,
    port: int,
    target: str,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    rcvbuf: int | None = None,
) -> RawClient:
    """Complete the opening handshake by hand; ``rcvbuf`` shrinks the socket's receive buffer."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with trio.fail_after(WAIT_S):
            await sock.connect((host, port))
            stream = trio.SocketStream(sock)
            conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            request = wse.Request(host=f"{host}:{port}", target=target, extra_headers=list(headers))
            await stream.send_all(conn.send(request))
            while True:
                data = await stream.receive_some(4096)
                assert data, "server closed during the handshake"
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, wse.AcceptConnection):
                        # Frames that arrived with the 101 stay queued inside ``conn``.
                        return RawClient(stream, conn, event)
                    raise AssertionError(f"handshake refused: {event!r}")
    except BaseException:
        sock.close()
        raise


# -- the server ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Endpoint:
    """Clients of a chat server at ``host:port`` (in this process or another one)."""

    e2e: E2E
    host: str
    port: int
    path: str = "/ws"

    @property
    def url(self) -> str:
        """The WebSocket URL of the chat endpoint."""
        return f"ws://{self.host}:{self.port}{self.path}"

    async def get(self, target: str) -> HttpResponse:
        return await http_get(self.host, self.port, target)

    def _target(self, query: str) -> str:
        return self.url + (f"?{query}" if query else "")

    @asynccontextmanager
    async def websocket(
        self,
        token: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] | None = None,
        query: str = "",
    ) -> AsyncIterator[WebSocketConnection]:
        """A trio-websocket connection; ``token`` goes in ``Authorization: Bearer``."""
        extra = [(k.encode(), v.encode()) for k, v in headers]
        if token is not None:
            extra.append((b"authorization", f"Bearer {token}".encode()))
        opened: WebSocketConnection | None = None
        ended = False  # the body ran to its end
        try:
            async with open_websocket_url(
                self._target(query),
                extra_headers=extra,
                subprotocols=list(subprotocols) if subprotocols is not None else None,
                connect_timeout=WAIT_S,
                disconnect_timeout=WAIT_S,
            ) as ws:
                opened = ws
                yield ws
                ended = True
        except trio.Cancelled as exc:
            # trio-websocket 0.12 answers a ping that arrives after its close frame went out
            # (python-trio/trio-websocket#184); wsproto refuses the pong, the reader task dies
            # of it, and open_websocket re-raises the Cancelled its close caught then, from
            # a scope that no longer exists. The close frame is out: the chat ended as it
            # was going to. Anything else, and a cancel of our own, goes on.
            if not (
                ended
                and isinstance(exc.__context__, LocalProtocolError)
                and opened is not None
                and opened.closed is not None
                and trio.current_effective_deadline() != -math.inf
            ):
                raise
        finally:
            if opened is not None:
                # trio-websocket 0.12 never closes its socket when the *server* closed the
                # WebSocket (aclose() returns early): an unraisable ResourceWarning later.
                await opened._stream.aclose()

    @asynccontextmanager
    async def chat(
        self,
        token: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] | None = None,
        query: str = "",
    ) -> AsyncIterator[Chat]:
        """A connected :class:`Chat` whose ``connection_ready`` has been read."""
        if token is None and subprotocols is None and not query:
            token = self.e2e.token()
        async with self.websocket(
            token, headers=headers, subprotocols=subprotocols, query=query
        ) as ws:
            chat = Chat(ws)
            await chat.expect("connection_ready")
            yield chat

    async def reject(
        self,
        token: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
        query: str = "",
    ) -> Rejection:
        """Attempt a handshake that must be refused; return the refusal.

        Uses wsproto on a socket of our own: trio-websocket leaks its socket when a
        handshake is rejected (an unraisable ResourceWarning under filterwarnings=error).
        """
        extra = [(k.encode(), v.encode()) for k, v in headers]
        if token is not None:
            extra.append((b"authorization", f"Bearer {token}".encode()))
        target = self.path + (f"?{query}" if query else "")
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = wse.Request(
            host=f"{self.host}:{self.port}",
            target=target,
            extra_headers=extra,
            subprotocols=list(subprotocols),
        )
        rejected: wse.RejectConnection | None = None
        body = b""
        done = False
        with trio.fail_after(WAIT_S):
            stream = await trio.open_tcp_stream(self.host, self.port)
            async with stream:
                await stream.send_all(conn.send(request))
                while not done:
                    data = await stream.receive_some(65_536)
                    conn.receive_data(data or None)
                    for event in conn.events():
                        if isinstance(event, wse.AcceptConnection):
                            raise AssertionError("the handshake was accepted")
                        if isinstance(event, wse.RejectConnection):
                            rejected = event
                            done = not event.has_body
                        elif isinstance(event, wse.RejectData):
                            body += event.data
                            done = event.body_finished
                    assert done or data, "connection closed before the rejection was complete"
        assert rejected is not None
        return Rejection(
            rejected.status_code,
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in rejected.headers},
            body,
        )

    async def upgrade_head(self, headers: Iterable[tuple[str, str]]) -> str:
        """Send a WebSocket upgrade by hand; return the response head exactly as received."""
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers),
        ]
        data = b""
        with trio.fail_after(WAIT_S):
            stream = await trio.open_tcp_stream(self.host, self.port)
            async with stream:
                await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65_536)
                    assert chunk, f"connection closed before the response head: {data!r}"
                    data += chunk
        return data.partition(b"\r\n\r\n")[0].decode("latin-1")

    @asynccontextmanager
    async def raw(
        self, token: str | None = None, *, rcvbuf: int | None = None
    ) -> AsyncIterator[RawClient]:
        """A :class:`RawClient` past the handshake (``Authorization: Bearer``); closed on exit."""
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        client = await open_raw_client(self.host, self.port, self.path, headers, rcvbuf=rcvbuf)
        async with client.stream:
            yield client

    async def started_then_dropped(self, token: str, text: str) -> dict[str, Any]:
        """Start a run on a raw connection, read its ``agent_started``, then drop the TCP
        connection (no closing handshake): a client cut mid-run. Returns that frame."""
        async with self.raw(token) as raw:
            message = {"type": "user_message", "text": text, "client_id": "c1"}
            await raw.send_text(json.dumps(message))
            with trio.fail_after(WAIT_S):
                while True:
                    raw.conn.receive_data(await raw.stream.receive_some(65_536))
                    for event in raw.conn.events():
                        if isinstance(event, wse.TextMessage):
                            frame: dict[str, Any] = json.loads(event.data)
                            if frame["type"] == "agent_started":
                                return frame


@attrs.frozen(kw_only=True)
class LiveServer(Endpoint):
    """A ``serve()`` running in this test; ``stopped`` is set once serve() has returned."""

    running: RunningServer
    settings: Settings
    stopped: trio.Event
    cancel_scope: trio.CancelScope

    @property
    def open_connections(self) -> int:
        return self.running.lifecycle.open_connections

    def shutdown(self, grace_s: float) -> None:
        """Begin the graceful shutdown a SIGTERM would."""
        self.running.shutdown(grace_s)

    def stop_now(self) -> None:
        """Cancel serve(): the documented hard stop."""
        self.cancel_scope.cancel()

    async def wait_connections(self, count: int) -> None:
        """Poll until exactly ``count`` WebSocket connections are open (the server's count)."""
        with trio.fail_after(WAIT_S):
            # The lifecycle exposes a count, not an event per change: poll it.
            while self.open_connections != count:  # noqa: ASYNC110
                await trio.sleep(0.01)

    async def wait_stopped(self) -> None:
        """Until serve() has returned."""
        with trio.fail_after(WAIT_S):
            await self.stopped.wait()


@attrs.frozen
class E2E:
    """Factory of settings, tokens and live servers for the end-to-end tests.

    ``transport`` is pinned ("asgi": Quart-Trio on Hypercorn) rather than left to the
    default, so a change of default does not silently change what these tests cover.
    """

    secret: bytes = SECRET
    transport: str = "asgi"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "jwt_secret": self.secret,
            "transport": self.transport,
        }
        values.update(overrides)
        settings = Settings(**values)
        settings.validate()
        return settings

    def token(
        self,
        sub: str = "alice",
        *,
        ttl_s: float = 600.0,
        now: float | None = None,
        secret: bytes | None = None,
        **kwargs: Any,
    ) -> str:
        return mint_token(
            secret=self.secret if secret is None else secret,
            algorithm="HS256",
            subject=sub,
            ttl_s=ttl_s,
            now=time.time() if now is None else now,
            **kwargs,
        )

    def endpoint(self, host: str, port: int, path: str = "/ws") -> Endpoint:
        """Clients for a server this test did not start (e.g. a subprocess)."""
        return Endpoint(e2e=self, host=host, port=port, path=path)

    @asynccontextmanager
    async def server(
        self,
        settings: Settings | None = None,
        *,
        services: Services | None = None,
        **overrides: Any,
    ) -> AsyncIterator[LiveServer]:
        """``serve()`` on 127.0.0.1:ephemeral for the body of the ``async with``; then cancelled.

        The body runs inside this function's nursery. A nursery whose body raises
        cancels itself, and its cancel scope then absorbs every ``trio.Cancelled`` it
        holds; so a ``Cancelled`` that no scope of the body's caught (a stray one:
        trio-websocket re-raises the one its close caught once its nursery has exited,
        when its reader task failed meanwhile) would end the body early without an
        error. Such an end raises :class:`RuntimeError` instead (the ``Cancelled`` as
        its cause), saying how ``serve()`` stood. A ``Cancelled`` from an enclosing
        scope (the test's own) propagates as ever.
        """
        if settings is None:
            settings = self.settings(**overrides)
        else:
            assert not overrides, "pass settings or overrides, not both"
        stopped = trio.Event()
        server_scope = trio.CancelScope()
        server_end = "was running"  # how serve() ended, once it has

        async def run(*, task_status: trio.TaskStatus[RunningServer]) -> None:
            nonlocal server_end
            try:
                with server_scope:
                    await serve(settings, services=services, task_status=task_status)
                stopped_now = " (stop_now())" if server_scope.cancelled_caught else ""
                server_end = f"had returned{stopped_now}"
            except BaseException as exc:
                server_end = f"had raised {exc!r}"
                raise
            finally:
                stopped.set()

        error: Exception | None = None
        cut: BaseException | None = None  # what ended the body, unless it ran to its end
        server_then = ""  # how serve() stood when it did
        async with trio.open_nursery() as nursery:
            with trio.fail_after(WAIT_S):
                running: RunningServer = await nursery.start(run)
            live = LiveServer(
                e2e=self,
                host=settings.host,
                port=running.port,
                path=settings.path,
                running=running,
                settings=settings,
                stopped=stopped,
                cancel_scope=server_scope,
            )
            try:
                yield live
            except Exception as exc:
                # Re-raised below, outside the nursery: a failing assertion then reads as
                # itself instead of as an ExceptionGroup.
                error = exc
            except BaseException as exc:  # Cancelled, KeyboardInterrupt: through the nursery
                cut, server_then = exc, server_end
                raise
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if cut is not None:  # the nursery's cancel scope absorbed it
            raise RuntimeError(
                f"the body of e2e.server() was cut short by {cut!r}, a Cancelled that no "
                f"scope of the body's caught (serve() {server_then} by then); see its "
                "cause and context for where it was raised"
            ) from cut


@pytest.fixture
def transport() -> str:
    """The transport ``e2e`` serves with; a module parametrizes it to cover both."""
    return "asgi"


@pytest.fixture
def e2e(transport: str) -> E2E:
    return E2E(transport=transport)
