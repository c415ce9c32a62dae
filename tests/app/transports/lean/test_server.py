"""The lean transport (``transport="lean"``) over real sockets, and the sender's write batching.

Every server here is ``serve()`` on 127.0.0.1 with an ephemeral port. Clients: trio-websocket,
the ``websockets`` sync client (in a thread), and a raw client of our own (websockets'
sans-IO protocol on the client side, plus hand-made frames for protocol violations) that
reads, answers and pings only when a test says so. Rejections are compared byte for byte
with the ASGI transport started in the same test.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import CLIENT, OPEN, SERVER, Protocol
from websockets.sync.client import connect as sync_connect

from app import (
    EchoAgent,
    Emit,
    LeanTransport,
    MemoryTransport,
    PeerClosed,
    RunContext,
    RunningServer,
    ServerLifecycle,
    Services,
    Settings,
    UserContext,
    build_services,
    memory_transport_pair,
    mint_token,
    run_session,
    serve,
)
from app.core._events import AgentThinking
from app.transports.lean._connection import text_frame

SECRET: Final = b"lean-test-secret-0123456789abcdefghij"
WAIT_S: Final = 5.0
TERMINAL: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})
KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="


def lean_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "jwt_secret": SECRET,
        "transport": "lean",
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.validate()
    return settings


def token(sub: str = "alice", *, secret: bytes = SECRET) -> str:
    return mint_token(secret=secret, algorithm="HS256", subject=sub, ttl_s=600, now=time.time())


@attrs.frozen
class Live:
    running: RunningServer
    settings: Settings
    stopped: trio.Event

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def url(self) -> str:
        return f"{self.running.ws_url}{self.settings.path}"

    async def wait_connections(self, count: int, wait_s: float = WAIT_S) -> None:
        with trio.fail_after(wait_s):
            while self.running.lifecycle.open_connections != count:  # noqa: ASYNC110
                await trio.sleep(0.01)


@asynccontextmanager
async def running(settings: Settings, services: Services | None = None) -> AsyncIterator[Live]:
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[RunningServer]) -> None:
        try:
            await serve(settings, services=services, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT_S):
            server: RunningServer = await nursery.start(run)
        yield Live(server, settings, stopped)
        nursery.cancel_scope.cancel()


# -- plain HTTP and raw handshakes ---------------------------------------------------------


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(port: int, request: bytes, *, has_body: bool = True) -> Response:
    """Send ``request`` as is; read one response (up to its content-length)."""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65_536)
                assert chunk, f"closed before a response head: {data!r}"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0")) if has_body else 0
            while len(body) < length:
                chunk = await stream.receive_some(65_536)
                assert chunk, "closed before the body was complete"
                body += chunk
    return Response(int(lines[0].split(" ")[1]), headers, body)


def get(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def upgrade(target: str = "/ws", *headers: str) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame built by hand (for frames a correct library refuses to send)."""
    head = bytes([(0x80 if fin else 0) | opcode])
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


@attrs.define
class Raw:
    """A WebSocket client that reads, and answers pings, only when told to."""

    stream: trio.SocketStream
    head: str
    proto: Protocol = attrs.field(factory=lambda: Protocol(CLIENT, state=OPEN, max_size=None))
    frames: list[Frame] = attrs.field(factory=list)
    eof: bool = False

    async def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        await self.stream.send_all(b"".join(self.proto.data_to_send()))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(bytes(f.data)) for f in self.frames if f.opcode is Opcode.TEXT]

    @property
    def close(self) -> tuple[int, str] | None:
        for f in self.frames:
            if f.opcode is Opcode.CLOSE:
                parsed = Close.parse(f.data)
                return parsed.code, parsed.reason
        return None

    async def read_some(self) -> None:
        """One read from the socket; frames are parsed, never answered."""
        try:
            data = await self.stream.receive_some(1 << 20)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            return
        self.proto.receive_data(data)
        self.frames.extend(f for f in self.proto.events_received() if isinstance(f, Frame))
        self.proto.data_to_send()  # pongs are never sent

    async def read(self, wait_s: float = WAIT_S) -> None:
        """Read until a close frame, EOF or ``wait_s``."""
        with trio.move_on_after(wait_s):
            while not self.eof and self.close is None:
                await self.read_some()


@asynccontextmanager
async def raw_client(
    port: int, *headers: str, rcvbuf: int | None = None, ready: bool = True
) -> AsyncIterator[Raw]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with trio.fail_after(WAIT_S):
        await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(upgrade("/ws", *headers))
        data = b""
        with trio.fail_after(WAIT_S):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65_536)
                assert chunk, data
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        client = Raw(stream, head.decode("latin-1"))
        if rest:
            client.proto.receive_data(rest)
            client.frames.extend(e for e in client.proto.events_received() if isinstance(e, Frame))
        if ready:
            with trio.fail_after(WAIT_S):
                while not client.texts():  # Hypercorn pings first
                    await client.read_some()
            assert client.texts()[0]["type"] == "connection_ready"
        yield client


def bearer(sub: str = "alice") -> str:
    return f"Authorization: Bearer {token(sub)}"


# -- HTTP ---------------------------------------------------------------------------------


async def test_http_routes() -> None:
    async with running(lean_settings()) as live:
        health = await http(live.port, get("/health"))
        ready = await http(live.port, get("/ready"))
        head = await http(live.port, get("/health", method="HEAD"), has_body=False)
        missing = await http(live.port, get("/nope"))
        post = await http(live.port, get("/health", "Content-Length: 0", method="POST"))
        plain = await http(live.port, get("/ws"))
        garbage = await http(live.port, b"HELLO\r\n\r\n")
        huge = await http(live.port, get("/health", "X-Big: " + "a" * 20_000))
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert health.headers["content-type"] == "application/json"
    assert (ready.status, ready.json()) == (200, {"status": "ready"})
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "16")
    assert (missing.status, missing.headers["content-type"]) == (404, "application/json")
    assert (post.status, post.headers["allow"]) == (405, "HEAD, GET")
    assert (plain.status, plain.headers["upgrade"]) == (426, "websocket")
    assert garbage.status == 400
    assert huge.status == 431


async def test_ready_turns_503_and_handshakes_are_refused_while_draining() -> None:
    settings = lean_settings(agent_delay_ms=100, retry_after_s=3)
    async with running(settings) as live, raw_client(live.port, bearer()) as client:
        await client.send_text(json.dumps({"type": "user_message", "text": "finish me"}))
        with trio.fail_after(WAIT_S):
            while client.texts()[-1]["type"] != "agent_started":
                await client.read_some()
        live.running.shutdown(5)
        ready = await http(live.port, get("/ready"))
        refused = await http(live.port, upgrade("/ws", bearer("bob")))
        assert (ready.status, ready.json()) == (503, {"status": "draining"})
        assert (refused.status, refused.headers["retry-after"]) == (503, "3")
        assert refused.json() == {"error": "unavailable", "detail": "server is draining"}
        began = time.monotonic()
        await client.read()
        assert client.close == (1001, "server_shutdown")
        kinds = [f["type"] for f in client.texts()]
        assert kinds[-1] == "agent_completed"  # the run finished, then the close
        await client.send_raw(frame(Opcode.CLOSE, (1001).to_bytes(2, "big")))
        with trio.fail_after(3):
            await live.stopped.wait()  # serve() returned: drain done, listener closed
        assert time.monotonic() - began < 2


# -- round trips ---------------------------------------------------------------------------


async def _refused(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send ``request`` in one write; the whole answer, and whether the server then reset
    a byte sent after it (it had let go of the socket at once)."""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            answer = b""
            while chunk := await stream.receive_some(65_536):
                answer += chunk
            reset = False
            try:
                for _ in range(20):  # the first write after the close draws the reset
                    await stream.send_all(b"x")
                    await trio.sleep(0.01)
            except trio.BrokenResourceError:
                reset = True
    return answer, reset


async def test_a_refused_handshake_is_answered_whole_and_let_go_at_once() -> None:
    # RFC 6455 4.1: the client waits for the answer, so nothing is left to linger for.
    async with running(lean_settings()) as live:
        answer, reset = await _refused(live.port, upgrade("/ws", "Authorization: Bearer nope"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert json.loads(body)["error"] == "invalid_token"
    assert reset


async def test_a_refused_handshake_with_bytes_after_it_still_gets_the_linger() -> None:
    # A client that did not wait (frames right behind its request): the server reads what
    # follows before closing, so no reset can eat the answer on its way.
    async with running(lean_settings()) as live:
        request = upgrade("/ws", "Authorization: Bearer nope") + frame(Opcode.TEXT, b"x" * 64)
        answer, reset = await _refused(live.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert json.loads(body)["error"] == "invalid_token"
    assert not reset


async def test_round_trip_with_trio_websocket_and_the_subprotocol_carrier() -> None:
    async with (
        running(lean_settings()) as live,
        open_websocket_url(live.url, subprotocols=["chat.v1", f"bearer.{token('bob')}"]) as ws,
    ):
        assert ws.subprotocol == "chat.v1"
        ready = json.loads(await ws.get_message())
        assert (ready["type"], ready["user_id"]) == ("connection_ready", "bob")
        await ws.send_message(json.dumps({"type": "user_message", "text": "a b c"}))
        events: list[dict[str, Any]] = []
        with trio.fail_after(WAIT_S):
            while not events or events[-1]["type"] not in TERMINAL:
                events.append(json.loads(await ws.get_message()))
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
        assert events[-1]["result"] == {"text": "a b c", "words": 3}
        await ws.aclose()
        await live.wait_connections(0)


async def test_an_open_connection_keeps_nothing_of_its_opening_request() -> None:
    # The session outlives every frame that parsed the request: none may keep its head,
    # headers or handshake info (about 2.5 KiB of each idle connection's memory).
    from app.session._transport import HandshakeInfo
    from app.transports.lean._server import _Request

    async with running(lean_settings()) as live, raw_client(live.port, bearer()):
        await live.wait_connections(1)
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, (_Request, HandshakeInfo))]
        assert kept == []


async def test_the_token_is_never_echoed_in_the_upgrade() -> None:
    tok = token()
    async with (
        running(lean_settings()) as live,
        raw_client(live.port, f"Sec-WebSocket-Protocol: chat.v1, bearer.{tok}") as client,
    ):
        assert "sec-websocket-protocol: chat.v1\r\n" in client.head.lower() + "\r\n"
        assert tok not in client.head


async def test_round_trip_with_the_websockets_sync_client() -> None:
    async with running(lean_settings()) as live:

        def converse() -> list[dict[str, Any]]:
            headers = {"Authorization": f"Bearer {token('carol')}"}
            with sync_connect(live.url, additional_headers=headers, open_timeout=WAIT_S) as ws:
                frames = [json.loads(ws.recv(timeout=WAIT_S))]
                ws.send(
                    json.dumps({"type": "user_message", "text": "héllo wörld", "client_id": "c1"})
                )
                while frames[-1]["type"] not in TERMINAL:
                    frames.append(json.loads(ws.recv(timeout=WAIT_S)))
                assert ws.ping(b"hi").wait(WAIT_S)  # the server answers WebSocket pings
                ws.send(json.dumps({"type": "ping"}))
                frames.append(json.loads(ws.recv(timeout=WAIT_S)))
            return frames

        frames = await trio.to_thread.run_sync(converse)
        await live.wait_connections(0)
    assert frames[0]["user_id"] == "carol"
    assert frames[1]["client_id"] == "c1"
    assert frames[-2]["result"] == {"text": "héllo wörld", "words": 2}
    assert frames[-1] == {"type": "pong"}


# -- handshake rejections: the same bytes as ASGI --------------------------------------------


async def test_rejections_match_the_asgi_transport() -> None:
    common: dict[str, Any] = {
        "allowed_origins": ("https://ok.example",),
        "max_connections": 1,
        "retry_after_s": 7,
    }
    wrong = token(secret=b"another-secret-0123456789abcdefghijkl")
    cases: list[tuple[str, bytes]] = [
        ("missing token", upgrade("/ws")),
        ("bad signature", upgrade("/ws", f"Authorization: Bearer {wrong}")),
        ("two carriers", upgrade(f"/ws?access_token={token()}", bearer())),
        ("bad scheme", upgrade("/ws", "Authorization: Basic Zm9vOmJhcg==")),
        ("subprotocol", upgrade("/ws", "Sec-WebSocket-Protocol: other.v2", bearer())),
        ("origin", upgrade("/ws", "Origin: https://evil.example", bearer())),
        ("health", get("/health")),
        ("ready", get("/ready")),
    ]
    answers: dict[str, list[tuple[int, str, bytes]]] = {}
    for transport in ("asgi", "lean"):
        async with running(lean_settings(transport=transport, **common)) as live:
            seen: list[tuple[int, str, bytes]] = []
            for _, request in cases:
                response = await http(live.port, request)
                relevant = ("content-type", "www-authenticate", "retry-after")
                headers = {k: v for k, v in response.headers.items() if k in relevant}
                seen.append((response.status, json.dumps(headers), response.body))
            async with raw_client(live.port, bearer()):  # the one slot is taken: 503
                response = await http(live.port, upgrade("/ws", bearer("bob")))
                seen.append((response.status, response.headers["retry-after"], response.body))
            answers[transport] = seen
    assert answers["lean"] == answers["asgi"]
    statuses = [answer[0] for answer in answers["lean"]]
    assert statuses == [401, 401, 400, 400, 400, 403, 200, 200, 503]


# -- closes ----------------------------------------------------------------------------------


async def test_binary_frame_closes_1003() -> None:
    async with running(lean_settings()) as live, raw_client(live.port, bearer()) as client:
        await client.send_raw(frame(Opcode.BINARY, b"\x00\x01"))
        await client.read()
        assert client.close == (1003, "binary_not_supported")
        await client.send_raw(frame(Opcode.CLOSE, (1003).to_bytes(2, "big")))
        await live.wait_connections(0, wait_s=2)


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_oversize_message_closes_1009(fragmented: bool) -> None:
    async with (
        running(lean_settings(max_message_bytes=1024)) as live,
        raw_client(live.port, bearer()) as client,
    ):
        text = json.dumps({"type": "ping", "pad": "é" * 600}).encode()  # > 1024 bytes
        if fragmented:
            await client.send_raw(frame(Opcode.TEXT, text[:700], fin=False))
            await client.send_raw(frame(Opcode.CONT, text[700:]))
        else:
            await client.send_raw(frame(Opcode.TEXT, text))
        await client.read()
        assert client.close == (1009, "message_too_big")
        await live.wait_connections(0, wait_s=2)


async def test_message_at_the_byte_limit_is_read() -> None:
    async with (
        running(lean_settings(max_message_bytes=1024)) as live,
        raw_client(live.port, bearer()) as client,
    ):
        text = '{"type": "ping"}' + " " * (1024 - 16)
        await client.send_raw(frame(Opcode.TEXT, text.encode()))
        with trio.fail_after(WAIT_S):
            while client.texts()[-1] != {"type": "pong"}:
                await client.read_some()


async def test_invalid_utf8_closes_1007() -> None:
    async with running(lean_settings()) as live, raw_client(live.port, bearer()) as client:
        await client.send_raw(frame(Opcode.TEXT, b'{"type": "\xff\xfe"}'))
        await client.read()
        assert client.close is not None
        assert client.close[0] == 1007
        await client.send_raw(frame(Opcode.CLOSE, (1007).to_bytes(2, "big")))
        await live.wait_connections(0, wait_s=2)


@pytest.mark.parametrize(
    "bad",
    [
        frame(Opcode.TEXT, b'{"type": "ping"}', mask=False),
        frame(Opcode.PING, b"x" * 126),
        bytes([0x80 | 0x40 | Opcode.TEXT, 0x80 | 2]) + b"\x00\x00\x00\x00{}",  # RSV1 set
    ],
    ids=["unmasked", "control-over-125", "reserved-bit"],
)
async def test_protocol_violations_close_1002(bad: bytes) -> None:
    async with running(lean_settings()) as live, raw_client(live.port, bearer()) as client:
        await client.send_raw(bad)
        await client.read()
        assert client.close is not None
        assert client.close[0] == 1002
        await live.wait_connections(0, wait_s=3)


async def test_idle_connection_closes_1000() -> None:
    settings = lean_settings(idle_timeout_s=0.3)
    async with running(settings) as live, raw_client(live.port, bearer()) as client:
        began = time.monotonic()
        await client.read()
        assert client.close == (1000, "idle_timeout")
        assert 0.25 <= time.monotonic() - began < 2


async def test_silent_peer_is_closed_after_ping_interval_plus_pong_timeout() -> None:
    settings = lean_settings(ping_interval_s=0.2, pong_timeout_s=0.3)
    async with running(settings) as live, raw_client(live.port, bearer()) as client:
        began = time.monotonic()
        await client.read()  # pings arrive and are never answered
        elapsed = time.monotonic() - began
        assert client.close == (1001, "pong_timeout")
        assert any(f.opcode is Opcode.PING for f in client.frames)
        assert elapsed < 0.2 + 0.3 + 0.5
        await live.wait_connections(0, wait_s=3)  # dropped although it never answers


async def test_peer_answering_pings_stays_open() -> None:
    settings = lean_settings(ping_interval_s=0.1, pong_timeout_s=0.2)
    async with running(settings) as live, raw_client(live.port, bearer()) as client:
        with trio.move_on_after(0.8):
            while True:
                # Pings that came with connection_ready are answered before the next read.
                for f in client.frames:
                    if f.opcode is Opcode.PING:
                        await client.send_raw(frame(Opcode.PONG, bytes(f.data)))
                client.frames = [f for f in client.frames if f.opcode is not Opcode.PING]
                await client.read_some()
        assert client.close is None
        assert live.running.lifecycle.open_connections == 1


@attrs.frozen
class FloodAgent:
    """Emits large events as fast as the connection takes them."""

    name: str = "flood"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        while True:
            await emit(AgentThinking(thought="x" * 16_000))


async def test_slow_consumer_closes_1008() -> None:
    settings = lean_settings(send_timeout_s=0.5)
    services = attrs.evolve(build_services(settings), agent=FloodAgent())
    async with (
        running(settings, services) as live,
        raw_client(live.port, bearer(), rcvbuf=4096) as client,
    ):
        await client.send_text(json.dumps({"type": "user_message", "text": "flood me"}))
        await trio.sleep(settings.send_timeout_s + 0.5)  # not reading: the server gives up
        await client.read()  # reading again lets the rest and the close frame through
        assert client.close == (1008, "slow_consumer")
        thoughts = [f for f in client.texts() if f["type"] == "agent_thinking"]
        assert [f["seq"] for f in thoughts] == list(range(2, len(thoughts) + 2))  # none cut
        await live.wait_connections(0)


async def test_slowloris_is_dropped_after_the_open_timeout() -> None:
    async with running(lean_settings(open_timeout_s=0.3)) as live:
        stream = await trio.open_tcp_stream("127.0.0.1", live.port)
        async with stream:
            began = time.monotonic()
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: test\r\n")
            with trio.fail_after(2):
                while True:
                    try:
                        await stream.send_all(b"X")  # one header byte at a time
                    except trio.BrokenResourceError:
                        break
                    with trio.move_on_after(0.05):
                        try:
                            if not await stream.receive_some(100):
                                break
                        except trio.BrokenResourceError:
                            break
            assert 0.25 < time.monotonic() - began < 1.5


async def test_cancelling_serve_drops_connections_without_a_close_frame() -> None:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[RunningServer]) -> None:
        with scope:
            await serve(lean_settings(), task_status=task_status)

    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(run)
        async with raw_client(server.port, bearer()) as client:
            scope.cancel()
            await client.read(2)
    assert client.eof
    assert client.close is None


# -- write batching: frames queued while the connection is busy leave in one write ------------


class GatedStream(trio.abc.HalfCloseableStream):
    """A stream whose writes wait for ``gate`` and are recorded one by one."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.gate.wait()
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def session_parts(**overrides: Any) -> tuple[UserContext, Services, ServerLifecycle]:
    settings = Settings(jwt_secret=SECRET, **overrides)
    services = build_services(settings, logging.getLogger("test.lean"))
    context = UserContext("alice", "conn_lean", math.inf, "authorization")
    return context, services, ServerLifecycle(max_connections=1)


async def test_frames_queued_while_a_write_is_blocked_leave_in_one_write() -> None:
    server_end, client_end = trio.testing.memory_stream_pair()
    gated = GatedStream(server_end)
    transport = LeanTransport(gated, max_message_bytes=65_536, logger=logging.getLogger("t"))
    client = Protocol(CLIENT, state=OPEN, max_size=None)
    received: list[bytes] = []

    async def send(text: bytes) -> None:
        await transport.send((text,), math.inf)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, b"first")  # writes itself, and waits at the gate
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, b"second")  # queued behind the blocked write
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, b"third")
        await trio.testing.wait_all_tasks_blocked()
        assert gated.writes == []
        gated.gate.set()
        with trio.fail_after(WAIT_S):
            while len(received) < 3:
                client.receive_data(await client_end.receive_some())
                received += [
                    bytes(f.data) for f in client.events_received() if isinstance(f, Frame)
                ]
    assert received == [b"first", b"second", b"third"]
    assert len(gated.writes) == 2  # the blocked write, then everything queued behind it
    assert b"second" in gated.writes[1]
    assert b"third" in gated.writes[1]


async def test_the_events_of_one_step_of_a_run_leave_in_one_write() -> None:
    server_end, client_end = trio.testing.memory_stream_pair()
    gated = GatedStream(server_end)
    gated.gate.set()
    transport = LeanTransport(gated, max_message_bytes=65_536, logger=logging.getLogger("t"))
    context, services, lifecycle = session_parts()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_session, transport, context, services, lifecycle)
        client = Protocol(CLIENT, state=OPEN, max_size=None)
        client.send_text(b'{"type": "user_message", "text": "one two"}')
        await client_end.send_all(b"".join(client.data_to_send()))
        frames: list[dict[str, Any]] = []
        with trio.fail_after(WAIT_S):
            while len(frames) < 6:
                client.receive_data(await client_end.receive_some())
                frames += [
                    json.loads(bytes(f.data))
                    for f in client.events_received()
                    if isinstance(f, Frame)
                ]
        nursery.cancel_scope.cancel()
    assert [f["type"] for f in frames][-1] == "agent_completed"
    # connection_ready at once; the echo agent without delay runs in one step: its five
    # events (agent_started to agent_completed) are written together when the run ends.
    assert [write.count(b'"type"') for write in gated.writes] == [1, 5]


async def test_connections_wait_on_the_servers_poller_not_each_on_trios_epoll() -> None:
    def waiting_on_trio() -> int:
        return int(trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read)

    async with running(lean_settings()) as live, AsyncExitStack() as stack:
        before = waiting_on_trio()
        for name in ("a", "b", "c", "d", "e"):
            ws = await stack.enter_async_context(
                open_websocket_url(live.url, subprotocols=["chat.v1", f"bearer.{token(name)}"])
            )
            assert json.loads(await ws.get_message())["type"] == "connection_ready"
        await live.wait_connections(5)
        await trio.testing.wait_all_tasks_blocked()
        # The five clients' own readers (trio-websocket) wait on Trio's epoll; the
        # server's five wait on its poller, which Trio sees as one descriptor.
        assert waiting_on_trio() - before == 5


@attrs.define
class GatedTransport:
    """A memory transport whose writes wait for ``gate``; records what each write had."""

    inner: MemoryTransport
    gate: trio.Event = attrs.field(factory=trio.Event)
    batches: list[list[str]] = attrs.field(factory=list)
    pings: bool = True
    immediate_writes: bool = False

    async def receive(self) -> str:
        return await self.inner.receive()

    def queue(self, frames: Sequence[bytes]) -> None:
        self.batches.append([frame.decode() for frame in frames])
        self.inner.queue(frames)

    def backlog(self) -> int:
        return self.inner.backlog()

    def write_now(self) -> bool:
        return self.inner.write_now()

    async def flush(self, deadline: float) -> None:
        await self.gate.wait()
        await self.inner.flush(deadline)

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        self.queue(frames)
        await self.flush(deadline)

    def ping(self, on_pong: Callable[[], None]) -> None:
        self.inner.ping(on_pong)

    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(code, reason)


def kinds(batches: Iterable[list[str]]) -> list[list[str]]:
    return [[json.loads(text)["type"] for text in batch] for batch in batches]


async def test_a_drain_closes_after_the_run_s_frames_are_written() -> None:
    inner, client = memory_transport_pair()
    transport = GatedTransport(inner)
    transport.gate.set()
    context, services, lifecycle = session_parts()
    services = attrs.evolve(services, agent=EchoAgent())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_session, transport, context, services, lifecycle)
        assert (await client.receive_json())["type"] == "connection_ready"
        transport.gate = trio.Event()
        await client.send_json({"type": "user_message", "text": "a"})
        await trio.testing.wait_all_tasks_blocked()
        lifecycle.begin_drain(10)  # a run in flight: it finishes, is written, then 1001
        await trio.testing.wait_all_tasks_blocked()
        transport.gate.set()
        received = []

        async def read_until_closed() -> None:
            while True:
                received.append((await client.receive_json())["type"])

        with trio.fail_after(WAIT_S), pytest.raises(PeerClosed) as closed:
            await read_until_closed()
    assert kinds(transport.batches)[0] == ["connection_ready"]
    assert [kind for [kind] in kinds(transport.batches)[1:]] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert received[-1] == "agent_completed"
    assert (closed.value.code, closed.value.reason) == (1001, "server_shutdown")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_text_frame_is_the_frame_websockets_builds(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    protocol = Protocol(SERVER, state=OPEN, max_size=None)
    protocol.send_text(payload)
    assert text_frame(payload) == b"".join(protocol.data_to_send())
