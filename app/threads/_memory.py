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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

import trio

from ._backend import TERMINAL_KINDS, Entry, Retention, ThreadHead, ThreadSummary
from ._common import ThreadKey, check_limit, last_entries

__all__ = ["ENTRY_OVERHEAD", "MemoryBackend"]

#: Bytes an entry takes beyond its text (the tuple, its strings' headers), about.
ENTRY_OVERHEAD: Final = 250


def _seq(entry: Entry) -> int:
    return entry.thread_seq


class _Thread:
    """One thread's log: its retained entries, oldest first, and its numbering.

    What :meth:`MemoryBackend.head_now` answers is kept up to date entry by entry
    (``client_ids``, ``open_runs``, by :meth:`MemoryBackend.append_one` and
    :meth:`lost`): opening a thread costs the same with ten thousand entries retained as
    with one.
    """

    __slots__ = ("client_ids", "entries", "last_seq", "open_runs", "size", "updated_at")

    def __init__(self) -> None:
        # A list, not a deque: page() and after() bisect it by thread_seq.
        self.entries: list[Entry] = []
        self.last_seq = 0
        self.updated_at = 0.0
        self.size = 0  # bytes of the retained entries, about
        #: client_id -> run_id of the retained user_message entries (the latest wins).
        self.client_ids: dict[str, str] = {}
        #: run_id -> the last retained entry of each run without a terminal entry.
        self.open_runs: dict[str, Entry] = {}

    def lost(self, dropped: Sequence[Entry]) -> None:
        """Forget the dropped (oldest) entries in what the head answers."""
        if not self.entries:  # all of them: nothing is left to answer for
            self.client_ids.clear()
            self.open_runs.clear()
            return
        client_ids, open_runs = self.client_ids, self.open_runs
        for entry in dropped:
            run_id = entry.run_id
            if run_id is None:
                continue
            if open_runs.get(run_id) is entry:  # the run's last entry: none of it is left
                del open_runs[run_id]
            client_id = entry.client_id
            if client_id is not None and client_ids.get(client_id) == run_id:
                del client_ids[client_id]  # only a user_message carries a client_id


class MemoryBackend:
    """Thread logs in memory, keyed by user id then thread id.

    Bounded by ``retention``: ``max_events`` is applied to each thread as it is
    appended to, ``ttl_s`` by :meth:`prune`; and in all by ``max_bytes``. A thread
    whose entries are all dropped keeps its ``last_seq`` (a few bytes) so that its
    numbering never restarts under the same epoch. Every method checkpoints first and
    then runs without awaiting: a cancelled call did nothing. After :meth:`aclose` every call raises
    :class:`trio.ClosedResourceError`.

    ``clock`` is the wall clock of the store's owner; the interface itself needs none
    (entries carry their time, :meth:`prune` is given ``now``).
    """

    def __init__(
        self,
        retention: Retention,
        clock: Callable[[], float] = time.time,
        *,
        max_bytes: int = 0,
    ) -> None:
        self.retention = retention
        self.clock = clock
        #: Bytes of entries kept in all (0: no limit); past it the least recently
        #: updated threads lose their events first (a resume then answers ``retention``).
        self.max_bytes = max_bytes
        self._epoch = secrets.token_urlsafe(16)
        self._users: dict[str, dict[str, _Thread]] = {}
        # The threads by last update (least recent first), for the byte bound.
        self._recent: OrderedDict[_Thread, None] = OrderedDict()
        self._newest: _Thread | None = None
        self._bytes = 0
        self._closed = False

    @property
    def epoch(self) -> str:
        """A random string drawn when this store was made: a new store lost everything."""
        return self._epoch

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        """Where the thread stands. Cancellation: nothing to undo."""
        await self._checkpoint()
        return self.head_now(user_id, thread_id)

    def head_now(self, user_id: str, thread_id: str) -> ThreadHead:
        """:meth:`head` at once, in the caller's task (the thread logs open threads so)."""
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")
        thread = self._users.get(user_id, {}).get(thread_id)
        if thread is None:
            return ThreadHead(last_seq=0, first_seq=1, client_ids={})
        entries = thread.entries
        return ThreadHead(
            last_seq=thread.last_seq,
            first_seq=entries[0].thread_seq if entries else thread.last_seq + 1,
            client_ids=dict(thread.client_ids),
            open_runs={run_id: e.text for run_id, e in thread.open_runs.items()},
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
        memory store so, with nothing to wait for (one entry at a time, on the hot path).
        """
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")
        if len(entries) != 1:
            last_entries(entries, self._last_seq)  # the whole batch is checked first
        for entry in entries:
            self.append_one(entry)

    def append_one(self, entry: Entry) -> None:
        """:meth:`append_now` of one entry checked by the caller, with the retention and
        memory bounds applied (the hot path: one per event sent, so one unpacking of the
        entry instead of a field lookup each, and the head noted inline)."""
        if self._closed:
            raise trio.ClosedResourceError("the thread store is closed")
        user_id, thread_id, seq, kind, run_id, client_id, text, at = entry
        threads = self._users.get(user_id)
        if threads is None:
            threads = self._users[user_id] = {}
        thread = threads.get(thread_id)
        if thread is None:
            thread = threads[thread_id] = _Thread()
        if seq <= thread.last_seq:
            raise ValueError(
                f"thread_seq {seq} of thread {thread_id!r} is not above "
                f"its last seq {thread.last_seq}"
            )
        entries = thread.entries
        entries.append(entry)
        if run_id is not None:  # what the head answers: the run's last entry, until it ends
            if kind in TERMINAL_KINDS:
                thread.open_runs.pop(run_id, None)
            else:
                thread.open_runs[run_id] = entry
                if client_id is not None and kind == "user_message":
                    thread.client_ids[client_id] = run_id
        thread.last_seq, thread.updated_at = seq, at
        size = len(text) + ENTRY_OVERHEAD
        thread.size += size
        self._bytes += size
        max_events = self.retention.max_events
        if max_events > 0 and entries[0].thread_seq <= seq - max_events:
            floor = seq - max_events
            # A thread at its cap drops one entry per append: no bisect for that.
            one = entries[1].thread_seq > floor  # entries[-1] is above it: two at least
            self._drop(thread, 1 if one else bisect.bisect_right(entries, floor, key=_seq))
        if self.max_bytes:
            if self._newest is not thread:  # a turn appends several in a row: once
                self._newest = thread
                recent = self._recent
                recent[thread] = None
                recent.move_to_end(thread)
            if self._bytes > self.max_bytes:
                self._evict()

    def _drop(self, thread: _Thread, count: int) -> None:
        dropped = thread.entries[:count]
        del thread.entries[:count]
        thread.lost(dropped)
        size = sum(len(e.text) for e in dropped) + ENTRY_OVERHEAD * len(dropped)
        thread.size -= size
        self._bytes -= size

    def _evict(self) -> None:
        # The least recently updated threads lose their events first, down to 90 %.
        recent = self._recent
        while self._bytes > self.max_bytes * 0.9 and recent:
            thread, _ = recent.popitem(last=False)
            if thread is self._newest:
                self._newest = None
            self._drop(thread, len(thread.entries))

    @property
    def bytes_held(self) -> int:
        """About how many bytes the retained entries take."""
        return self._bytes

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
                expired = 0
                while expired < len(thread.entries) and thread.entries[expired].at < cutoff:
                    expired += 1
                if expired:
                    self._drop(thread, expired)
                    dropped += expired
        return dropped

    async def aclose(self) -> None:
        """Forget everything. Idempotent; cannot be cancelled before it is done."""
        self._closed = True
        self._users.clear()
        self._recent.clear()
        self._newest = None
        self._bytes = 0
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
