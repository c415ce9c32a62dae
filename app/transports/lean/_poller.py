"""One epoll for the reads of every lean connection, woken through one Trio task.

``trio.lowlevel.wait_readable`` registers the socket with Trio's epoll for one event
each time it waits (``EPOLLONESHOT``): an ``epoll_ctl`` system call and Trio's
bookkeeping per message read, about 4 us a wait against a registration that stays
(200 connections woken 200 times each, one core). A :class:`ReadPoller` registers each
connection once, edge-triggered, in an epoll of its own; Trio watches that one
descriptor, and one task reschedules the readers whose sockets have news.

Edge-triggered means an event per arrival, not per readable state: a socket with news
that nobody waits for is remembered (the next wait returns at once), and a reader waits
only after a read took less than it asked for or failed with ``EAGAIN`` (the lean
transport's rule already), so no news is missed. A spurious wake-up costs a read that
finds nothing. The peer's end of input is a state, not an arrival: once signalled, every
wait returns at once (a read then finds it). Linux only (``select.epoll``); elsewhere,
and while :meth:`ReadPoller.run` is not running, readers wait on Trio's own.
"""

from __future__ import annotations

import contextlib
import select
from typing import Final

import outcome
import trio

__all__ = ["ReadPoller"]

_EVENTS: Final = (
    getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLET", 0)
)
#: The peer's end of input, a reset, an error: states, not arrivals (see ``_ended``).
_ENDED: Final = (
    getattr(select, "EPOLLRDHUP", 0)
    | getattr(select, "EPOLLHUP", 0)
    | getattr(select, "EPOLLERR", 0)
)


class ReadPoller:
    """The lean connections' readable sockets, for one running server.

    Built by ``serve_lean``, which runs :meth:`run` in a nursery that outlives its
    connections and closes it after. It holds descriptors and the tasks waiting on them,
    never what they serve.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._ready: set[int] = set()  # news that nobody waited for yet
        # Sockets whose peer ended its input (or that failed): every wait returns at once.
        # The end comes as one edge, often with the last bytes: a read that takes those
        # bytes returns short, and no further edge would tell of the end still to read.
        self._ended: set[int] = set()
        self._running = False

    def register(self, fd: int) -> None:
        """Watch ``fd`` (an open socket) until :meth:`forget`."""
        self._ready.discard(fd)  # a closed socket's number, reused
        self._ended.discard(fd)
        if self._epoll is not None:
            self._epoll.register(fd, _EVENTS)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd``; call before closing it."""
        self._ready.discard(fd)
        self._ended.discard(fd)
        task = self._waiting.pop(fd, None)
        if task is not None:  # as trio.lowlevel.notify_closing does
            closed = trio.ClosedResourceError("the socket was closed while waiting")
            trio.lowlevel.reschedule(task, outcome.Error(closed))
        if self._epoll is not None:
            # Already closed (the kernel dropped it then), or never registered.
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    async def wait_readable(self, fd: int) -> None:
        """``trio.lowlevel.wait_readable`` for a registered ``fd``.

        Raises :class:`trio.ClosedResourceError` if ``fd`` is forgotten meanwhile.
        Cancellation: as ``trio.lowlevel.wait_readable`` (a checkpoint either way).
        """
        if not self._running:
            await trio.lowlevel.wait_readable(fd)
            return
        ready = self._ready
        if fd in ready or fd in self._ended:
            ready.discard(fd)
            await trio.lowlevel.checkpoint()
            return
        waiting = self._waiting
        if fd in waiting:
            raise trio.BusyResourceError("another task is already reading this socket")
        waiting[fd] = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            del waiting[fd]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake readers as their sockets get news, until cancelled.

        Cancellation: stops; readers still waiting are woken (their read finds nothing
        or something) and wait on Trio's own epoll from then on.
        """
        epoll = self._epoll
        if epoll is None:
            task_status.started()
            await trio.sleep_forever()
            return
        waiting, ready, reschedule = self._waiting, self._ready, trio.lowlevel.reschedule
        self._running = True
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, flags in epoll.poll(0):
                    if flags & _ENDED:
                        self._ended.add(fd)
                    task = waiting.pop(fd, None)
                    if task is None:
                        ready.add(fd)
                    else:
                        reschedule(task)
        finally:
            self._running = False
            ready.clear()
            self._ended.clear()
            tasks = list(waiting.values())
            waiting.clear()
            for task in tasks:
                reschedule(task)

    def close(self) -> None:
        """Close the epoll (after :meth:`run` ended)."""
        if self._epoll is not None:
            self._epoll.close()
