"""One outbound queue for a transport that writes a message per call (ASGI, memory).

The task that sends writes itself when no write is in progress; while one is, its
frames join the queue and the writing task takes them too, so frames leave in the order
they were queued and a cancelled sender's frames still go out. The lean transport has
its own, byte-level version of the same rule (``app/_lean_ws.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Sequence

import trio

from isolation import request_scoped

from ._transport import SendTimeout, TransportClosed

__all__ = ["FrameQueue"]


@request_scoped
class FrameQueue:
    """Frames of one connection waiting for ``write`` (one message per call)."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0  # frames ever queued
        self._written = 0  # frames ever written
        self._writing: trio.Event | None = None
        self.broken = False

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        """Queue ``frames`` and return once they are written (see ``Transport.send``).

        ``write`` raises :class:`TransportClosed` when the peer is gone; nothing more is
        written after that. Cancellation: the frames stay queued.
        """
        if self.broken:
            raise TransportClosed
        self._queue.extend(frames)
        self._queued += len(frames)
        mine = self._queued
        with trio.move_on_at(deadline) as scope:
            while self._written < mine:
                if self.broken:
                    raise TransportClosed
                writing = self._writing
                if writing is None:
                    await self._write_queue()
                else:
                    await writing.wait()
        # A transport may shield its writes (Hypercorn does): one that only finished past
        # the deadline is a slow consumer all the same.
        if scope.cancelled_caught or trio.current_time() > deadline:
            raise SendTimeout

    async def _write_queue(self) -> None:
        done = self._writing = trio.Event()
        queue = self._queue
        try:
            while queue:
                await self._write(queue[0])
                queue.popleft()
                self._written += 1
        except TransportClosed:
            self.broken = True
            queue.clear()
            raise
        finally:
            self._writing = None
            done.set()
