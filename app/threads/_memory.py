"""The ``memory`` backend: thread logs in dicts, lost with the process.

For development, tests and single-process deployments that accept losing history on a
restart: every new :class:`MemoryBackend` has a new :attr:`~MemoryBackend.epoch`, which
tells clients that held cursors into the old one that their history is gone.
"""

from __future__ import annotations

import bisect
import heapq
import secrets
import time
from collections.abc import Callable, Sequence

import trio

from ._backend import Entry, Retention, ThreadHead, ThreadSummary
from ._common import ThreadKey, check_limit, last_entries

__all__ = ["MemoryBackend"]


def _seq(entry: Entry) -> int:
    return entry.thread_seq


class _Thread:
    """One thread's log: its retained entries, oldest first, and its numbering."""

    __slots__ = ("entries", "last_seq", "updated_at")

    def __init__(self) -> None:
        # A list, not a deque: page() and after() bisect it by thread_seq.
        self.entries: list[Entry] = []
        self.last_seq = 0
        self.updated_at = 0.0


class MemoryBackend:
    """Thread logs in memory, keyed by user id then thread id.

    Bounded by ``retention``: ``max_events`` is applied to each thread as it is
    appended to, ``ttl_s`` by :meth:`prune`. A thread whose entries are all dropped
    keeps its ``last_seq`` (a few bytes) so that its numbering never restarts under
    the same epoch. Every method checkpoints first and then runs without awaiting:
    a cancelled call did nothing. After :meth:`aclose` every call raises
    :class:`trio.ClosedResourceError`.

    ``clock`` is the wall clock of the store's owner; the interface itself needs none
    (entries carry their time, :meth:`prune` is given ``now``).
    """

    def __init__(self, retention: Retention, clock: Callable[[], float] = time.time) -> None:
        self.retention = retention
        self.clock = clock
        self._epoch = secrets.token_urlsafe(16)
        self._users: dict[str, dict[str, _Thread]] = {}
        self._closed = False

    @property
    def epoch(self) -> str:
        """A random string drawn when this store was made: a new store lost everything."""
        return self._epoch

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        """Where the thread stands. Cancellation: nothing to undo."""
        thread = await self._thread(user_id, thread_id)
        if thread is None:
            return ThreadHead(last_seq=0, first_seq=1, client_ids={})
        entries = thread.entries
        return ThreadHead(
            last_seq=thread.last_seq,
            first_seq=entries[0].thread_seq if entries else thread.last_seq + 1,
            client_ids={
                e.client_id: e.run_id
                for e in entries
                if e.kind == "user_message" and e.client_id is not None and e.run_id is not None
            },
        )

    @property
    def ttl_s(self) -> float:
        return self.retention.ttl_s

    async def append(self, entries: Sequence[Entry]) -> None:
        """Add ``entries`` and apply ``max_events`` to their threads.

        Raises :class:`ValueError`, writing nothing, if a thread's ``thread_seq``
        values do not rise above its ``last_seq``. Cancellation: nothing written.
        """
        await self._checkpoint()
        self.append_now(entries)

    def append_now(self, entries: Sequence[Entry]) -> None:
        """:meth:`append` at once, in the caller's task: the thread logs write the
        memory store so, with nothing to wait for."""
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")
        newest = last_entries(entries, self._last_seq)
        for entry in entries:
            self._users.setdefault(entry.user_id, {}).setdefault(
                entry.thread_id, _Thread()
            ).entries.append(entry)
        max_events = self.retention.max_events
        for (user_id, thread_id), entry in newest.items():
            thread = self._users[user_id][thread_id]
            thread.last_seq = entry.thread_seq
            thread.updated_at = entry.at
            if max_events > 0:
                keep_from = bisect.bisect_right(
                    thread.entries, entry.thread_seq - max_events, key=_seq
                )
                del thread.entries[:keep_from]

    async def page(
        self, user_id: str, thread_id: str, before: int | None, limit: int
    ) -> tuple[list[Entry], bool]:
        """The newest ``limit`` entries below ``before``, oldest first, and whether
        older ones remain. Cancellation: nothing to undo.
        """
        check_limit(limit)
        thread = await self._thread(user_id, thread_id)
        if thread is None:
            return [], False
        entries = thread.entries
        end = len(entries) if before is None else bisect.bisect_left(entries, before, key=_seq)
        start = max(0, end - limit)
        return entries[start:end], start > 0

    async def after(self, user_id: str, thread_id: str, after: int, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries above ``after``. Cancellation: nothing to undo."""
        check_limit(limit)
        thread = await self._thread(user_id, thread_id)
        if thread is None:
            return []
        start = bisect.bisect_right(thread.entries, after, key=_seq)
        return thread.entries[start : start + limit]

    async def threads(self, user_id: str, limit: int) -> list[ThreadSummary]:
        """The user's threads holding entries, newest update first (ties by thread id).

        Cancellation: nothing to undo.
        """
        check_limit(limit)
        await self._checkpoint()
        held = [
            ThreadSummary(thread_id=thread_id, last_seq=t.last_seq, updated_at=t.updated_at)
            for thread_id, t in self._users.get(user_id, {}).items()
            if t.entries
        ]
        return heapq.nsmallest(limit, held, key=lambda s: (-s.updated_at, s.thread_id))

    async def prune(self, now: float) -> int:
        """Drop the entries with ``at < now - ttl_s`` (none when ``ttl_s`` is 0).

        Cancellation: nothing dropped.
        """
        await self._checkpoint()
        if self.retention.ttl_s <= 0:
            return 0
        cutoff = now - self.retention.ttl_s
        dropped = 0
        for threads in self._users.values():
            for thread in threads.values():
                kept = [e for e in thread.entries if e.at >= cutoff]
                dropped += len(thread.entries) - len(kept)
                thread.entries = kept
        return dropped

    async def aclose(self) -> None:
        """Forget everything. Idempotent; cannot be cancelled before it is done."""
        self._closed = True
        self._users.clear()
        await trio.lowlevel.checkpoint()

    async def _checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")

    async def _thread(self, user_id: str, thread_id: str) -> _Thread | None:
        await self._checkpoint()
        return self._users.get(user_id, {}).get(thread_id)

    def _last_seq(self, key: ThreadKey) -> int:
        thread = self._users.get(key[0], {}).get(key[1])
        return 0 if thread is None else thread.last_seq
