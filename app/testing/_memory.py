"""An in-memory transport: a session and a client in one process, no sockets.

For tests of sessions and agents, and for the isolation package's stateful test.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from isolation import request_scoped

from ..session._transport import TransportClosed, UnsupportedFrame
from ..transports._frames import FrameQueue

__all__ = ["MemoryClient", "MemoryTransport", "PeerClosed", "memory_transport_pair"]


class PeerClosed(Exception):
    """The server closed the connection; ``code`` and ``reason`` are what it sent."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


@attrs.frozen
class _Close:
    code: int | None
    reason: str


@attrs.define
class _Link:
    responsive: bool = True
    server_close: _Close | None = None
    client_gone: bool = False


@request_scoped
class MemoryTransport(FrameQueue):
    """The server end: implements the session's Transport interface."""

    pings = True

    def __init__(
        self,
        inbound: trio.MemoryReceiveChannel[str | bytes],
        outbound: trio.MemorySendChannel[str | _Close],
        link: _Link,
    ) -> None:
        self._inbound = inbound
        self._outbound = outbound
        self._link = link
        super().__init__()

    async def receive(self) -> str:
        try:
            item = await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed from None
        if isinstance(item, bytes):
            raise UnsupportedFrame
        return item

    async def _write(self, frame: bytes) -> None:
        if self._link.server_close is not None or self._link.client_gone:
            raise TransportClosed
        try:
            await self._outbound.send(frame.decode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    def ping(self, on_pong: Callable[[], None]) -> None:
        if self._link.client_gone:
            raise TransportClosed
        if self._link.responsive:
            on_pong()

    async def close(self, code: int, reason: str) -> None:
        if self._link.server_close is not None:
            return
        await self.flush_before_close()
        if self._link.server_close is not None:
            return
        self._link.server_close = _Close(code, reason)
        # The close frame goes after everything already queued, as on a socket.
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._outbound.send_nowait(_Close(code, reason))
        self._outbound.close()


class MemoryClient:
    """The client end, with the calls a WebSocket client library would offer."""

    def __init__(
        self,
        outbound: trio.MemorySendChannel[str | bytes],
        inbound: trio.MemoryReceiveChannel[str | _Close],
        link: _Link,
    ) -> None:
        self._outbound = outbound
        self._inbound = inbound
        self._link = link

    @property
    def responsive(self) -> bool:
        """Whether pings are answered (false simulates a dead peer)."""
        return self._link.responsive

    @responsive.setter
    def responsive(self, value: bool) -> None:
        self._link.responsive = value

    async def send_text(self, text: str) -> None:
        await self._outbound.send(text)

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj))

    async def send_binary(self, data: bytes) -> None:
        await self._outbound.send(data)

    async def receive(self) -> str:
        """The next text frame; raises :class:`PeerClosed` once the server closed."""
        try:
            item = await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            close = self._link.server_close
            raise PeerClosed(close.code if close else None, close.reason if close else "") from None
        if isinstance(item, _Close):
            raise PeerClosed(item.code, item.reason)
        return item

    async def receive_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.receive())
        return data

    async def disconnect(self) -> None:
        """Drop the connection without a close frame (the server sees the peer leave)."""
        self._link.client_gone = True
        await self._outbound.aclose()
        await self._inbound.aclose()


def memory_transport_pair(
    *, client_buffer: float = math.inf
) -> tuple[MemoryTransport, MemoryClient]:
    """A connected (server transport, client) pair.

    ``client_buffer`` is how many frames the client side buffers unread before
    the server's sends block (0 simulates a client that never reads).
    """
    c2s_send, c2s_recv = trio.open_memory_channel[str | bytes](math.inf)
    s2c_send, s2c_recv = trio.open_memory_channel[str | _Close](client_buffer)
    link = _Link()
    return MemoryTransport(c2s_recv, s2c_send, link), MemoryClient(c2s_send, s2c_recv, link)
