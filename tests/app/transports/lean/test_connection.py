"""The lean transport's reading: its fast path for plain text frames and the protocol's.

Whatever way the input is cut into reads, the messages, the answers to pings and the
closes for bad input are those websockets' protocol gives; only plain, whole text frames
skip its parser.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLIENT, OPEN, Protocol

from app.session._transport import TransportClosed
from app.transports.lean._connection import LeanTransport

LIMIT = 1_000


def _client() -> Protocol:
    return Protocol(CLIENT, state=OPEN, max_size=None)


def _wire(build: Callable[[Protocol], object]) -> bytes:
    """The bytes a client sends for what ``build`` does with its protocol."""
    client = _client()
    build(client)
    return b"".join(client.data_to_send())


def _transport() -> tuple[LeanTransport, trio.testing.MemorySendStream]:
    """A transport whose writes stay in the returned stream's buffer."""
    written = trio.testing.MemorySendStream()
    stream = trio.StapledStream(written, trio.testing.MemoryReceiveStream())
    transport = LeanTransport(stream, max_message_bytes=LIMIT, logger=logging.getLogger("t"))
    return transport, written


async def _sent_to_client(
    transport: LeanTransport, written: trio.testing.MemorySendStream
) -> list[Frame]:
    """The frames the server queued so far (written now), as the client parses them."""
    with contextlib.suppress(TransportClosed):
        await transport.flush(math.inf)
    client = _client()
    client.receive_data(written.get_data_nowait())
    return [e for e in client.events_received() if isinstance(e, Frame)]


def _mixed(client: Protocol) -> None:
    client.send_text(b'{"n":1}')
    client.send_text(("é" * 100).encode())  # 200 bytes: a 16-bit length
    client.send_text(b"")
    client.send_text(b"part one, ", fin=False)
    client.send_ping(b"p1")
    client.send_continuation(b"part two, ", fin=False)
    client.send_continuation(b"the end", fin=True)
    client.send_text(b'{"n":2}')


MIXED_MESSAGES = ['{"n":1}', "é" * 100, "", "part one, part two, the end", '{"n":2}']


async def _messages(transport: LeanTransport, count: int) -> list[str]:
    return [await transport.receive() for _ in range(count)]


async def test_every_cut_of_the_input_into_two_reads_gives_the_same_messages() -> None:
    data = _wire(_mixed)
    for cut in range(1, len(data)):  # an empty read is the end of input
        transport, client_end = _transport()
        transport._feed(data[:cut])
        transport._feed(data[cut:])
        assert await _messages(transport, len(MIXED_MESSAGES)) == MIXED_MESSAGES, cut
        pongs = [f for f in await _sent_to_client(transport, client_end) if f.opcode is Opcode.PONG]
        assert [bytes(f.data) for f in pongs] == [b"p1"], cut


async def test_input_read_one_byte_at_a_time_gives_the_same_messages() -> None:
    data = _wire(_mixed)
    transport, _ = _transport()
    for i in range(len(data)):
        transport._feed(data[i : i + 1])
    assert await _messages(transport, len(MIXED_MESSAGES)) == MIXED_MESSAGES


async def test_plain_text_frames_skip_the_protocols_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport, _ = _transport()
    parsed: list[bytes] = []
    receive_data = transport._protocol.receive_data

    def counted(data: bytes) -> None:
        parsed.append(bytes(data))
        receive_data(data)

    monkeypatch.setattr(transport._protocol, "receive_data", counted)
    ping = _wire(lambda c: c.send_ping(b"p"))
    transport._feed(
        _wire(lambda c: c.send_text(b"a")) + _wire(lambda c: c.send_text(b"b" * 300)) + ping
    )
    assert await _messages(transport, 2) == ["a", "b" * 300]
    assert parsed == [ping]  # only the control frame went to the protocol


async def _closed(transport: LeanTransport, client_end: trio.testing.MemorySendStream) -> int:
    with pytest.raises(TransportClosed):
        await transport.receive()
    closes = [f for f in await _sent_to_client(transport, client_end) if f.opcode is Opcode.CLOSE]
    assert len(closes) == 1
    return int.from_bytes(closes[0].data[:2], "big")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(
            # The header alone: closed before the payload is awaited.
            _wire(lambda c: c.send_text(b"x" * (LIMIT + 1)))[:8],
            CloseCode.MESSAGE_TOO_BIG,
            id="too-big",
        ),
        pytest.param(b"\x81\x02hi", CloseCode.PROTOCOL_ERROR, id="unmasked"),
        pytest.param(
            _wire(lambda c: c.send_text(b"\xff\xfe")), CloseCode.INVALID_DATA, id="not-utf8"
        ),
        pytest.param(
            _wire(lambda c: c.send_text(b"a", fin=False)) + b"\x81\x81\x00\x00\x00\x00b",
            CloseCode.PROTOCOL_ERROR,
            id="text-inside-fragments",
        ),
        pytest.param(b"\xc1\x81\x00\x00\x00\x00a", CloseCode.PROTOCOL_ERROR, id="rsv1"),
    ],
)
async def test_bad_input_is_closed_with_the_protocols_code(data: bytes, code: int) -> None:
    transport, client_end = _transport()
    transport._feed(data)
    assert await _closed(transport, client_end) == code


async def test_text_after_a_close_frame_in_the_same_read_is_not_handed_out() -> None:
    transport, client_end = _transport()
    transport._feed(
        _wire(lambda c: c.send_text(b"a"))
        + _wire(lambda c: c.send_close(1000, "bye"))
        + _wire(lambda c: c.send_text(b"late"))
    )
    assert await transport.receive() == "a"
    assert await _closed(transport, client_end) == 1000  # the echo of the peer's close


async def test_a_header_cut_short_by_the_end_of_input_ends_the_connection() -> None:
    transport, _ = _transport()
    transport._feed(_wire(lambda c: c.send_text(b"a" * 200))[:3])
    transport._feed(b"")
    with pytest.raises(TransportClosed):
        await transport.receive()
    assert transport._protocol.state is not OPEN


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda t: t._protocol.send_close(1000, "bye"), id="close-sent"),
        pytest.param(lambda t: t._feed(_wire(lambda c: c.send_close(1000, ""))), id="close-read"),
        pytest.param(lambda t: t._feed(b"\xc1\x81\x00\x00\x00\x00a"), id="failed"),
        pytest.param(lambda t: t._feed(b""), id="eof"),
    ],
)
async def test_the_protocols_open_flag_follows_its_state(
    end: Callable[[LeanTransport], object],
) -> None:
    # ``open`` is what the hot path reads instead of the ``state`` property.
    transport, _ = _transport()
    assert transport._protocol.open
    end(transport)
    assert transport._protocol.state is not OPEN
    assert not transport._protocol.open
    with pytest.raises(TransportClosed):
        transport.queue([b"{}"])


async def test_nothing_is_written_once_the_raw_socket_is_closed() -> None:
    # The descriptor comes from the stdlib socket's own fileno(): -1 once it is closed,
    # so a number the kernel gave to another connection is never used.
    raw, peer = socket.socketpair()
    raw.setblocking(False)
    with peer:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        transport = LeanTransport(
            stream, max_message_bytes=LIMIT, logger=logging.getLogger("t"), raw=raw
        )
        transport.queue([b'{"n":1}'])
        assert transport.write_now()
        assert peer.recv(100) == b'\x81\x07{"n":1}'
        number = raw.fileno()
        await stream.aclose()
        other, other_peer = socket.socketpair()  # most likely given the number just freed
        with other, other_peer:
            assert other.fileno() == number
            transport.queue([b'{"n":2}'])
            assert transport.write_now()  # nothing left for a task: the write failed
            other_peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                other_peer.recv(100)
        with pytest.raises(TransportClosed):
            transport.queue([b'{"n":3}'])
