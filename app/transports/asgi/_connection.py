"""The ASGI transport's WebSocket connection: the session's Transport over a Quart websocket."""

from __future__ import annotations

import trio
from quart.wrappers import Websocket

from isolation import request_scoped

from ...session._transport import TransportClosed, UnsupportedFrame
from .._frames import FrameQueue

__all__ = ["QuartTransport"]


@request_scoped
class QuartTransport(FrameQueue):
    """:class:`Transport` over a Quart websocket. Keepalive is Hypercorn's (``pings`` false)."""

    pings = False

    def __init__(self, ws: Websocket) -> None:
        self._ws = ws
        self._closed = False
        super().__init__()

    async def receive(self) -> str:
        data = await self._ws.receive()
        if isinstance(data, str):
            return data
        raise UnsupportedFrame  # bytes, or None for an empty binary frame

    async def _write(self, frame: bytes) -> None:
        if self._closed:
            raise TransportClosed
        await self._ws.send(frame.decode())  # Quart sends str as text, bytes as binary

    def ping(self) -> trio.Event:  # pragma: no cover - pings is False
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            # No flush first: each event was flushed when emitted, so what is still queued
            # waits behind a write Hypercorn shields, to a peer that does not read.
            self._closed = True
            await self._ws.close(code, reason)
