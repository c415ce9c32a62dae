"""The ASGI transport's WebSocket connection: the session's Transport over a Quart websocket."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quart.wrappers import Websocket

from isolation import request_scoped

from ...services._metrics import Traffic
from ...session._transport import TransportClosed, UnsupportedFrame
from .._frames import FrameQueue

__all__ = ["QuartTransport"]


@request_scoped
class QuartTransport(FrameQueue):
    """:class:`Transport` over a Quart websocket. Keepalive is Hypercorn's (``pings`` false).

    ``traffic`` counts messages and their payload bytes (Hypercorn does the framing).
    """

    pings = False

    def __init__(self, ws: Websocket, traffic: Traffic | None = None) -> None:
        self._ws = ws
        self._closed = False
        self._traffic = Traffic() if traffic is None else traffic
        # The close the server started (code, reason), for the metrics.
        self._closing: tuple[int | None, str | None] = (None, None)
        super().__init__()

    async def receive(self) -> str:
        data = await self._ws.receive()
        if isinstance(data, str):
            traffic = self._traffic
            traffic.frames_in += 1
            # isascii() is a flag of the str object: no encoding for most messages.
            traffic.bytes_in += len(data) if data.isascii() else len(data.encode())
            return data
        raise UnsupportedFrame  # bytes, or None for an empty binary frame

    def queue(self, frames: Sequence[bytes]) -> None:
        super().queue(frames)
        self._traffic.frames_out += len(frames)

    async def _write(self, frame: bytes) -> None:
        if self._closed:
            raise TransportClosed
        await self._ws.send(frame.decode())  # Quart sends str as text, bytes as binary
        self._traffic.bytes_out += len(frame)

    def closed_with(self) -> tuple[int | None, str | None]:
        """The close the server started, (code, reason); (None, None) if it started none.

        The peer's close is not visible here (Quart cancels the handler on it).
        """
        return self._closing

    def ping(self, on_pong: Callable[[], None]) -> None:  # pragma: no cover - pings is False
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            # No flush first: each event was flushed when emitted, so what is still queued
            # waits behind a write Hypercorn shields, to a peer that does not read.
            self._closed = True
            self._closing = (code, reason)
            await self._ws.close(code, reason)
