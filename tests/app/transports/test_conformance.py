"""The conformance echo route (``app/transports/_conformance.py``), both transports, its pieces.

End to end (``serve()`` on 127.0.0.1, a wsproto client of our own): text, binary, empty
and fragmented messages come back exactly; a close between fragments is answered with
the peer's code; the route does not exist without the setting. Then the parts with
fakes: the echo loop's idle and slow-consumer bounds, Quart's ``None`` for an empty
binary message, the lean opening's timeout, the setting and the startup warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing
import wsproto.events as wse

from app import ConfigError, LeanTransport, Settings, TransportClosed, load_settings
from app.transports._conformance import (
    ECHO_MAX_MESSAGE_BYTES,
    ECHO_PATH,
    STARTUP_WARNING,
    QuartEcho,
    echo,
    echo_path,
    log_startup_warning,
    serve_lean_echo,
)

if TYPE_CHECKING:
    from tests.app.conftest import E2E, LiveServer, RawClient

WAIT_S = 10.0
Message = str | bytes


@pytest.fixture(params=["lean", "asgi"])
def both(request: pytest.FixtureRequest, e2e: E2E) -> E2E:
    """``e2e`` once per transport."""
    return attrs.evolve(e2e, transport=request.param)


@asynccontextmanager
async def echo_client(live: LiveServer) -> AsyncIterator[RawClient]:
    """A raw client past the handshake of the echo route (no token)."""
    async with live.e2e.endpoint(live.host, live.port, path=ECHO_PATH).raw() as client:
        yield client


async def send(client: RawClient, *parts: Message) -> None:
    """One message in ``len(parts)`` frames (all of one kind)."""
    data = b""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, str):
            data += client.conn.send(wse.TextMessage(data=part, message_finished=last))
        else:
            data += client.conn.send(wse.BytesMessage(data=part, message_finished=last))
    await client.stream.send_all(data)


def joined(parts: Sequence[Message]) -> Message:
    """The message ``parts`` (all ``str`` or all ``bytes``) make."""
    if all(isinstance(part, str) for part in parts):
        return "".join(str(part) for part in parts)
    return b"".join(part for part in parts if isinstance(part, bytes))


async def receive(client: RawClient) -> Message | wse.CloseConnection:
    """The next whole message (fragments joined), or the close frame."""
    parts: list[Message] = []
    with trio.fail_after(WAIT_S):
        while True:
            for event in client.conn.events():
                if isinstance(event, wse.CloseConnection):
                    return event
                if isinstance(event, wse.Message):
                    parts.append(event.data)
                    if event.message_finished:
                        return joined(parts)
                else:
                    client.events.append(event)
            data = await client.stream.receive_some(1 << 20)
            client.conn.receive_data(data or None)


# -- end to end, both transports ---------------------------------------------------


@pytest.mark.parametrize(
    "message",
    ["hello", "", "héllo wörld ✓ 🚀", b"\x00\xff binary", b"", bytes(range(256)) * 300],
    ids=["text", "empty-text", "utf8", "binary", "empty-binary", "binary-76k"],
)
async def test_echoes_a_message_exactly(both: E2E, message: Message) -> None:
    async with both.server(conformance_echo=True) as live, echo_client(live) as client:
        await send(client, message)
        assert await receive(client) == message
        await send(client, "after")  # the connection goes on
        assert await receive(client) == "after"


@pytest.mark.parametrize(
    "parts",
    [("frag", "ment", "ed ✓"), (b"\x01", b"", b"\x02\x03"), ("", "")],
    ids=["text", "binary", "empty-text"],
)
async def test_joins_fragments(both: E2E, parts: tuple[Message, ...]) -> None:
    async with both.server(conformance_echo=True) as live, echo_client(live) as client:
        await send(client, *parts)
        assert await receive(client) == joined(parts)


async def test_a_ping_between_fragments_is_answered(both: E2E) -> None:
    async with both.server(conformance_echo=True) as live, echo_client(live) as client:
        conn = client.conn
        data = conn.send(wse.TextMessage(data="one ", message_finished=False))
        data += conn.send(wse.Ping(payload=b"between"))
        data += conn.send(wse.TextMessage(data="two", message_finished=True))
        await client.stream.send_all(data)
        assert await receive(client) == "one two"
        pongs = [e.payload for e in client.events if isinstance(e, wse.Pong)]
        assert pongs == [b"between"]


async def test_a_close_between_fragments_is_a_normal_close(both: E2E) -> None:
    # Autobahn 7.1.5: RFC 6455 lets control frames come between fragments.
    async with both.server(conformance_echo=True) as live, echo_client(live) as client:
        data = client.conn.send(wse.TextMessage(data="fragment1", message_finished=False))
        data += client.conn.send(wse.CloseConnection(code=1000, reason="bye"))
        await client.stream.send_all(data)
        closed = await receive(client)
        assert isinstance(closed, wse.CloseConnection)
        assert closed.code == 1000


async def test_closes_1009_above_its_limit(both: E2E) -> None:
    async with both.server(conformance_echo=True) as live, echo_client(live) as client:
        data = client.conn.send(wse.BytesMessage(data=b"\x00" * (ECHO_MAX_MESSAGE_BYTES + 1)))

        async def send_all() -> None:
            # The lean transport refuses the frame by its header: the rest may not be read.
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            closed = await receive(client)
        assert isinstance(closed, wse.CloseConnection)
        assert closed.code == 1009


async def test_the_chat_route_is_unchanged(both: E2E) -> None:
    async with both.server(conformance_echo=True) as live, live.chat() as chat:
        assert chat.ready["type"] == "connection_ready"
        rejected = await live.reject()  # still no token, no entry
        assert rejected.status == 401


async def test_the_route_does_not_exist_without_the_setting(both: E2E) -> None:
    async with both.server() as live:
        assert (await live.get(ECHO_PATH)).status == 404
        refused = await live.e2e.endpoint(live.host, live.port, path=ECHO_PATH).reject()
        assert refused.status == 404


async def test_a_full_server_refuses_it_503(both: E2E) -> None:
    async with both.server(conformance_echo=True, max_connections=1) as live:
        async with echo_client(live):
            await live.wait_connections(1)
            refused = await live.e2e.endpoint(live.host, live.port, path=ECHO_PATH).reject()
            assert refused.status == 503
        await live.wait_connections(0)


async def test_serve_logs_the_warning(both: E2E, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with both.server(conformance_echo=True):
        pass
    assert "CONFORMANCE ECHO IS ON" in caplog.text
    caplog.clear()
    async with both.server():
        pass
    assert "CONFORMANCE ECHO" not in caplog.text


# -- the echo loop with a fake transport ---------------------------------------------


@attrs.define
class FakeEcho:
    """An :class:`EchoTransport` fed by a channel; records what it sent and its close."""

    incoming: trio.MemoryReceiveChannel[Message]
    sent: list[Message] = attrs.field(factory=list)
    closed: tuple[int, str] | None = None
    block_sends: bool = False

    async def receive_message(self) -> Message:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            raise TransportClosed from None

    async def send_message(self, message: Message) -> None:
        if self.block_sends:
            await trio.sleep_forever()
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def fake() -> tuple[trio.MemorySendChannel[Message], FakeEcho]:
    send_channel, receive_channel = trio.open_memory_channel[Message](10)
    return send_channel, FakeEcho(receive_channel)


async def test_echo_returns_when_the_peer_leaves() -> None:
    peer, transport = fake()
    async with peer:
        await peer.send("a")
        await peer.send(b"b")
    await echo(transport, idle_timeout_s=5, send_timeout_s=5)
    assert transport.sent == ["a", b"b"]
    assert transport.closed is None


async def test_echo_closes_1000_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    peer, transport = fake()
    start = trio.current_time()
    await peer.send("x")
    await echo(transport, idle_timeout_s=30, send_timeout_s=5)
    assert transport.sent == ["x"]
    assert transport.closed == (1000, "idle_timeout")
    assert trio.current_time() - start == pytest.approx(30)


async def test_echo_closes_1008_when_the_peer_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, transport = fake()
    transport.block_sends = True
    await peer.send("x")
    await echo(transport, idle_timeout_s=300, send_timeout_s=10)
    assert transport.closed == (1008, "slow_consumer")


@attrs.define
class FakeQuartWebsocket:
    received: list[Any]
    sent: list[Message] = attrs.field(factory=list)
    closed: tuple[int, str] | None = None

    async def receive(self) -> Any:
        return self.received.pop(0)

    async def send(self, data: Message) -> None:
        self.sent.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_quart_echo_turns_none_back_into_an_empty_binary_message() -> None:
    ws = FakeQuartWebsocket([None, "", b"x"])
    adapter = QuartEcho(ws)  # type: ignore[arg-type]
    assert [await adapter.receive_message() for _ in range(3)] == [b"", "", b"x"]
    await adapter.send_message(b"")
    await adapter.close(1000, "bye")
    assert ws.sent == [b""]
    assert ws.closed == (1000, "bye")


async def test_lean_opening_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = trio.testing.lockstep_stream_pair()  # send_all waits for a reader
    settings = Settings(jwt_secret=b"s" * 32, conformance_echo=True, open_timeout_s=10)
    async with peer:
        with trio.fail_after(60):
            await serve_lean_echo(
                ours,  # type: ignore[arg-type]
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                b"",
                settings=settings,
                logger=logging.getLogger("test"),
            )
        await ours.aclose()


async def test_lean_send_message_after_the_peer_closed_raises() -> None:
    ours, peer = trio.testing.memory_stream_pair()
    transport = LeanTransport(ours, max_message_bytes=100, logger=logging.getLogger("test"))
    # A masked binary frame, then a close frame (code 1000), both with a zero mask.
    await peer.send_all(b"\x82\x82\x00\x00\x00\x00hi" + b"\x88\x82\x00\x00\x00\x00\x03\xe8")
    with trio.fail_after(WAIT_S):
        assert await transport.receive_message() == b"hi"
        with pytest.raises(TransportClosed):
            await transport.receive_message()
        with pytest.raises(TransportClosed):
            await transport.send_message("late")
        assert await peer.receive_some() == b"\x88\x02\x03\xe8"  # the close echoed
        await transport.finish(1.0)


# -- the setting ---------------------------------------------------------------------


def test_the_setting_is_off_by_default_and_reads_flag_and_env() -> None:
    secret = {"ENCLAVE_JWT_SECRET": "s" * 32}
    assert load_settings({}, secret).conformance_echo is False
    assert echo_path(load_settings({}, secret)) is None
    on = load_settings({}, {**secret, "ENCLAVE_CONFORMANCE_ECHO": "true"})
    assert on.conformance_echo is True
    assert echo_path(on) == ECHO_PATH
    assert load_settings({"conformance_echo": "yes"}, secret).conformance_echo is True
    with pytest.raises(ConfigError, match="--conformance-echo"):
        load_settings({"conformance_echo": "maybe"}, secret)


def test_the_chat_path_cannot_be_the_echo_path() -> None:
    with pytest.raises(ConfigError, match="--path"):
        load_settings({"path": ECHO_PATH, "conformance_echo": "true"}, {}, jwt_secret=b"s" * 32)
    assert load_settings({"path": ECHO_PATH}, {}, jwt_secret=b"s" * 32).path == ECHO_PATH


def test_the_warning_is_logged_only_when_on(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.conformance")
    caplog.set_level(logging.WARNING)
    log_startup_warning(Settings(jwt_secret=b"s" * 32), log)
    assert not caplog.records
    log_startup_warning(Settings(jwt_secret=b"s" * 32, conformance_echo=True), log)
    assert caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].getMessage() == STARTUP_WARNING % ECHO_PATH
