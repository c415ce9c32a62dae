"""The lean transport hands out messages already read one scheduler turn at a time.

A peer that packs many messages into one read must not keep the event loop to itself
while the session works through them; a peer that sends one message per read pays
no extra scheduler trip.
"""

from __future__ import annotations

import logging
import math

import trio
import trio.testing
from websockets.protocol import CLIENT, OPEN, Protocol

from app.transports.lean._connection import LeanTransport


def _frames(count: int) -> bytes:
    client = Protocol(CLIENT, state=OPEN, max_size=None)
    for i in range(count):
        client.send_text(f'{{"n":{i}}}'.encode())
    return b"".join(client.data_to_send())


async def test_buffered_messages_each_yield_to_other_tasks() -> None:
    server_end, _client_end = trio.testing.memory_stream_pair()
    transport = LeanTransport(
        server_end, max_message_bytes=65_536, logger=logging.getLogger("t"), initial=_frames(3)
    )
    got = []
    for _ in range(3):
        with trio.testing.assert_checkpoints():
            got.append(await transport.receive())
    assert got == ['{"n":0}', '{"n":1}', '{"n":2}']


async def test_a_yield_that_is_cancelled_takes_no_message() -> None:
    server_end, _client_end = trio.testing.memory_stream_pair()
    transport = LeanTransport(
        server_end, max_message_bytes=65_536, logger=logging.getLogger("t"), initial=_frames(2)
    )
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.receive()
    assert scope.cancelled_caught
    assert await transport.receive() == '{"n":0}'


async def test_one_message_per_read_costs_no_extra_trip() -> None:
    server_end, client_end = trio.testing.memory_stream_pair()
    transport = LeanTransport(server_end, max_message_bytes=65_536, logger=logging.getLogger("t"))
    await client_end.send_all(_frames(1))
    # The read is the only checkpoint: with no frames left over, receive() does not yield
    # before reading.
    with trio.testing.assert_checkpoints():
        assert await transport.receive() == '{"n":0}'
    assert not transport._events


async def test_a_peer_that_does_not_read_gets_no_further_message_taken() -> None:
    server_sock, client_sock = trio.socket.socketpair()
    transport = LeanTransport(
        trio.SocketStream(server_sock), max_message_bytes=65_536, logger=logging.getLogger("t")
    )
    big = "x" * 4_000_000  # far more than the socket buffers hold: the write waits
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.send, (big.encode(),), math.inf)
        await trio.testing.wait_all_tasks_blocked()
        assert transport._stuck is not None
        await client_sock.send(_frames(1))

        async def receive() -> None:
            got.append(await transport.receive())

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # the message is there, but the peer has not read our frames
        received = 0
        while received < len(big):  # the peer reads: the write moves, the message is taken
            received += len(await client_sock.recv(1 << 20))
    assert got == ['{"n":0}']
    assert transport._stuck is None
    server_sock.close()
    client_sock.close()
