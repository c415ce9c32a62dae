"""One outbound queue for a transport that writes a message per call (ASGI, memory).

The task that sends writes itself when no write is in progress; while one is, its
frames join the queue and the writing task takes them too, so frames leave in the order
they were queued and a cancelled sender's frames still go out. The lean transport has
its own, byte-level version of the same rule (``app/transports/lean/_connection.py``).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Sequence
from typing import Final

import trio

from ..session._transport import SendTimeout, TransportClosed

__all__ = ["CLOSE_FLUSH_S", "FrameQueue"]

#: While closing: how long the peer may take nothing before queued frames are dropped.
CLOSE_FLUSH_S: Final = 1.0


class FrameQueue:
    """The outbound half of a transport that writes one message per ``_write`` call.

    A transport subclasses it and defines ``_write``, raising :class:`TransportClosed`
    when the peer is gone.
    """

    #: Writes need a task (``_write`` is async): the session flushes each event.
    immediate_writes = False

    def __init__(self) -> None:
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0  # frames ever queued
        self._written = 0  # frames ever written
        self._writing: trio.Event | None = None
        self.broken = False

    def queue(self, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` without writing them; raises TransportClosed once broken."""
        if self.broken:
            raise TransportClosed
        self._queue.extend(frames)
        self._queued += len(frames)

    def backlog(self) -> int:
        """Bytes queued and not yet written."""
        return sum(map(len, self._queue))

    def write_now(self) -> bool:
        """Nothing is written without waiting here: True unless frames wait for a writer."""
        return self.broken or not self._queue or self._writing is not None

    async def flush(self, deadline: float) -> None:
        """Return once everything queued so far is written (see ``Transport.flush``).

        ``write`` raises :class:`TransportClosed` when the peer is gone; nothing more is
        written after that. Cancellation: the frames stay queued.
        """
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

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        """:meth:`queue` then :meth:`flush`."""
        self.queue(frames)
        await self.flush(deadline)

    async def flush_before_close(self) -> None:
        """Write what is queued ahead of a close frame, while the peer takes it.

        Gives up (quietly) once nothing was written for :data:`CLOSE_FLUSH_S`.
        Cancellation: stops; the rest is dropped with the connection.
        """
        while not self.broken and self._queue:
            before = self._written
            with contextlib.suppress(TransportClosed, SendTimeout):
                await self.flush(trio.current_time() + CLOSE_FLUSH_S)
            if self._written == before:
                return

    async def _write(self, frame: bytes) -> None:
        raise NotImplementedError

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
