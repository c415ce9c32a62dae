"""The lean transport's closing linger is bounded in bytes as well as in time.

A client that keeps flooding after the server's close frame must not make the
server read (and parse) everything it sends for the whole close timeout.
"""

from __future__ import annotations

import logging

import attrs
import trio
import trio.testing
from websockets.protocol import CLIENT, OPEN, Protocol

from app.transports.lean._connection import LINGER_BYTES, READ_BYTES, LeanTransport


@attrs.define
class CountingStream(trio.abc.HalfCloseableStream):
    """A stream that counts the bytes read through it."""

    inner: trio.abc.HalfCloseableStream
    read: int = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.read += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_peer_flooding_past_the_close_frame_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server_end, client_end = trio.testing.memory_stream_pair()
    counting = CountingStream(server_end)
    transport = LeanTransport(counting, max_message_bytes=65_536, logger=logging.getLogger("t"))
    client = Protocol(CLIENT, state=OPEN, max_size=None)
    for _ in range(200):
        client.send_text(b'{"type":"ping"}')
    burst = b"".join(client.data_to_send())

    async def flood() -> None:
        while True:  # never reads, never sends its close frame
            await client_end.send_all(burst)
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await transport.close(1008, "rate_limited")
        with trio.fail_after(10):
            await transport.finish(5.0)
        nursery.cancel_scope.cancel()
    # Without the byte bound it reads for the whole 5 s: megabytes.
    assert counting.read <= LINGER_BYTES + READ_BYTES < 1_000_000
