"""The thread logs: numbering, group commit and live delivery of every thread's events.

One :class:`ThreadLogs` per running server, built by ``serve()`` and passed down. It
gives each event of a thread its ``thread_seq`` at the moment the event is encoded,
collects the entries of every connection into batches that one writer task commits
to the backend (group commit), and tells a connection when a frame may be sent:
with a durable backend only once its entry is committed (*write before send*: what
a client saw is in the log after a crash), with the memory backend at once.

A thread is loaded (its head read from the backend) when a connection follows it and
stays pinned while any connection or run of its user holds it. The key of every
record, read and write is ``(user_id, thread_id)`` where ``user_id`` is the verified
subject: callers get a :class:`UserThreads` bound to one user, and this module is the
only place that keys the store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

if TYPE_CHECKING:
    import coredis

from ..core._codes import CancelReason
from ..core._events import RunCancelled, dump_json
from ._backend import (
    TERMINAL_KINDS,
    Backend,
    Entry,
    Retention,
    SharedBackend,
    ThreadHead,
    ThreadSummary,
)
from ._memory import MemoryBackend
from ._open import open_backend, redis_target
from ._redis import open_redis

__all__ = [
    "MAX_REPLAY_PAGE",
    "Follower",
    "ThreadLog",
    "ThreadLogs",
    "UserThreads",
    "open_thread_logs",
]

#: Entries read from the backend per page of a replay.
MAX_REPLAY_PAGE: Final = 500
#: How often expired entries are pruned when ``history_ttl_s`` is set (seconds).
PRUNE_EVERY_S: Final = 60.0
#: A shared backend: how long this process's thread leases last without a renewal,
#: and how often it renews them. A dead process's threads are claimable after the lease.
LEASE_S: Final = 3.0
HEARTBEAT_S: Final = 1.0
#: How long one read of the threads other processes write waits for an entry. A thread
#: followed meanwhile is read from its cursor at the next read: late by this much at
#: most, never missed.
TAIL_BLOCK_MS: Final = 200
TAIL_COUNT: Final = 500
#: How long one read of the cancels asked through a shared backend waits.
CANCEL_BLOCK_MS: Final = 1000
#: How often a process waiting to own a thread asks again.
CLAIM_RETRY_S: Final = 0.1

_new_entry: Final = tuple.__new__


class Follower(Protocol):
    """A connection following a thread: it receives the thread's events live."""

    @property
    def attached(self) -> bool:
        """False once its peer has left (its runs may still be running)."""
        ...

    def deliver(self, thread_id: str, frame: bytes, ticket: int) -> None:
        """Queue ``frame`` (an event of ``thread_id``) to be sent once ``ticket`` is sendable.

        Called from the task that appended the event (a run of the same user); must not block.
        """
        ...


@attrs.define(eq=False)
class ThreadLog:
    """One thread of one user while it is pinned: its head, followers and live runs."""

    user_id: str
    thread_id: str
    last_seq: int
    first_seq: int
    #: ``client_id -> run_id`` of the messages the thread accepted (idempotency).
    client_ids: dict[str, str]
    _logs: ThreadLogs = attrs.field(repr=False)
    followers: list[Follower] = attrs.field(factory=list, repr=False)
    #: ``run_id -> stop`` of the runs live in this thread (a resuming connection cancels).
    live_runs: dict[str, Callable[[], bool]] = attrs.field(factory=dict, repr=False)
    refs: int = 0
    #: Whether this process writes the thread. Always, but with a shared backend while
    #: another process owns it: then its events arrive by the tail and nothing is appended.
    owned: bool = True
    #: The runs live in another process (a shared backend), as the log tells them.
    remote_runs: set[str] = attrs.field(factory=set, repr=False)
    #: A client of another process sharing the backend follows it (refreshed by heartbeat).
    followed_elsewhere: bool = False

    @property
    def exists(self) -> bool:
        return self.last_seq > 0

    def append(
        self,
        kind: str,
        run_id: str | None,
        build: Callable[[int], bytes],
        *,
        origin: object = None,
        client_id: str | None = None,
    ) -> tuple[bytes, int]:
        """Give the next ``thread_seq`` to the event whose frame (UTF-8 JSON)
        ``build(thread_seq)`` encodes.

        Returns the frame and the ticket to wait for before sending it. Every follower
        but ``origin`` (which sends the frame itself) has it queued. If ``build``
        raises (``UnicodeEncodeError`` for text that is not UTF-8), nothing is used.
        """
        seq = self.last_seq + 1
        frame = build(seq)
        return frame, self.append_frame(kind, run_id, seq, frame, origin, client_id)

    def append_frame(
        self,
        kind: str,
        run_id: str | None,
        seq: int,
        frame: bytes,
        origin: object = None,
        client_id: str | None = None,
    ) -> int:
        """:meth:`append` of a frame encoded already, for ``thread_seq`` ``seq`` (the next:
        ``last_seq + 1``): its ticket. For a run's events, one per event sent: no builder
        to call back."""
        self.last_seq = seq
        logs = self._logs
        # tuple.__new__ itself: Entry(...) runs the named tuple's Python-level __new__
        # first, 110 against 290 ns on the hot path.
        entry = _new_entry(
            Entry,
            (
                self.user_id,
                self.thread_id,
                seq,
                kind,
                run_id,
                client_id,
                frame.decode(),
                logs.wall_clock(),
            ),
        )
        ticket = logs.push(entry)
        for follower in self.followers:
            if follower is not origin:
                follower.deliver(self.thread_id, frame, ticket)
        return ticket

    def take_remote(self, entry: Entry) -> None:
        """An entry another process appended: the thread moves on and its followers get it."""
        if entry.thread_seq <= self.last_seq:
            return  # read twice (the tail and a claim's catch-up)
        self.last_seq = entry.thread_seq
        if entry.client_id is not None and entry.run_id is not None:
            self.client_ids[entry.client_id] = entry.run_id
        if entry.run_id is not None:
            if entry.kind in TERMINAL_KINDS:
                self.remote_runs.discard(entry.run_id)
            else:
                self.remote_runs.add(entry.run_id)
        frame = entry.text.encode()
        for follower in self.followers:
            follower.deliver(self.thread_id, frame, 0)  # written already: sendable now

    def follow(self, follower: Follower) -> None:
        if not any(f is follower for f in self.followers):  # by identity, not equality
            self.followers.append(follower)

    def unfollow(self, follower: Follower) -> None:
        self.followers = [f for f in self.followers if f is not follower]

    def followed_by_another(self, follower: Follower) -> bool:
        """Whether a connection other than ``follower`` whose peer is there follows it
        (here, or in another process sharing the backend)."""
        return self.followed_elsewhere or any(
            f is not follower and f.attached for f in self.followers
        )


class ThreadLogs:
    """Every thread's log for one running server (see the module docstring).

    ``run`` (the writer) must be running in the server's nursery for appends to
    become durable; ``serve()`` starts it first and stops it last.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        durable: bool = True,
        ttl_s: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ) -> None:
        self._backend = backend
        #: A durable backend: frames wait for their commit. Memory: nothing to wait for.
        self._durable = durable
        # The memory backend is written at once, in the appending task: no writer, no wait.
        self._append_now: Callable[[Entry], None] | None = None
        # ... and read at once: opening a thread queues behind no other backend call.
        self._head_now: Callable[[str, str], ThreadHead] | None = None
        self._ttl_s = ttl_s
        self.wall_clock = wall_clock
        self._log = log or logging.getLogger("app.threads")
        self._open: dict[tuple[str, str], ThreadLog] = {}
        self._pending: list[Entry] = []
        self._given = 0  # tickets handed out
        self._written = 0  # tickets in the backend
        self._wake = trio.Event()  # the writer has something to write
        self._progress = trio.Event()  # ``_written`` moved; replaced each time
        self._lock = trio.Lock()  # one backend call at a time
        # (ticket, callback) of connections with frames waiting for a commit: like a
        # trio.Event's waiters, called (and forgotten) by the writer once it is done.
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        #: ``observe(op, seconds)`` of each backend call (the server's metrics).
        self.observe: Callable[[str, float], None] | None = None
        # A backend other processes share: leases, the tail, releases after the last write.
        self._shared = backend if isinstance(backend, SharedBackend) else None
        self._releases: dict[tuple[str, str], int] = {}  # key -> the ticket to write first
        self._tail_wake = trio.Event()

    @classmethod
    def in_memory(
        cls,
        retention: Retention | None = None,
        *,
        max_bytes: int = 0,
        wall_clock: Callable[[], float] = time.time,
    ) -> ThreadLogs:
        """Logs kept in this process only, in at most ``max_bytes`` (0: no limit): lost on
        restart (the epoch tells clients)."""
        backend = MemoryBackend(retention or Retention(), clock=wall_clock, max_bytes=max_bytes)
        logs = cls(backend, durable=False, ttl_s=backend.ttl_s, wall_clock=wall_clock)
        logs._append_now = backend.append_one
        logs._head_now = backend.head_now
        return logs

    @property
    def epoch(self) -> str:
        return self._backend.epoch

    @property
    def open_threads(self) -> int:
        return len(self._open)

    def for_user(self, user_id: str) -> UserThreads:
        """The logs as one user sees them: every call keyed by ``user_id``."""
        return UserThreads(self, user_id)

    # -- appending ------------------------------------------------------------

    def push(self, entry: Entry) -> int:
        """Queue ``entry`` for the writer; its ticket."""
        self._given += 1
        if self._append_now is not None:
            self._append_now(entry)
            self._written = self._given
        else:
            self._pending.append(entry)
            self._wake.set()
        return self._given

    @property
    def durable(self) -> bool:
        """Whether frames wait for their entries' commit (else any frame is sendable)."""
        return self._durable

    def sendable(self, ticket: int) -> bool:
        """Whether a frame of ``ticket`` may be sent now."""
        return ticket <= self._written or not self._durable

    def when_sendable(self, ticket: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the writer task) once a frame of ``ticket`` may be sent."""
        if self.sendable(ticket):
            callback()
        else:
            self._waiters.append((ticket, callback))

    async def wait_sendable(self, ticket: int) -> None:
        """Return once a frame of ``ticket`` may be sent. Cancellation: just stops waiting."""
        if self._durable:
            await self.wait_written(ticket)

    async def wait_written(self, ticket: int) -> None:
        """Return once ``ticket`` is in the backend. Cancellation: just stops waiting."""
        while self._written < ticket:
            await self._progress.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit what was appended, in batches, until cancelled.

        A failing backend ends it with the error (and with it the server): a store
        that cannot write must not let the server send what it did not keep.
        Cancellation: what is not committed yet is lost; :meth:`flush` first.
        """
        async with trio.open_nursery() as nursery:
            if self._ttl_s > 0:
                nursery.start_soon(self._pruner)
            if self._shared is not None:
                await nursery.start(self._heartbeat, self._shared)
                nursery.start_soon(self._tail, self._shared)
                nursery.start_soon(self._cancels, self._shared)
            task_status.started()
            while True:
                if self._pending:
                    await self._write_batch()
                elif self._releases:
                    await self._release_written()
                else:
                    await self._wake.wait()
                    self._wake = trio.Event()

    async def _write_batch(self) -> None:
        batch, self._pending = self._pending, []
        last = self._given
        async with self._lock:
            started = time.perf_counter()
            await self._backend.append(batch)
            self._timed("append", started)
        self._written = last
        self._progress.set()
        self._progress = trio.Event()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for ticket, callback in waiters:
                if ticket <= last:
                    callback()
                else:
                    self._waiters.append((ticket, callback))

    async def flush(self) -> None:
        """Commit what is pending now. Cancellation: a batch started completes."""
        while self._pending:
            await self._write_batch()
        if self._releases:
            await self._release_written()

    # -- a backend shared with other processes ---------------------------------

    async def _heartbeat(
        self,
        shared: SharedBackend,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # Not under the lock: a long batch must not let the leases lapse.
        await shared.heartbeat(LEASE_S)
        task_status.started()
        while True:
            await trio.sleep(HEARTBEAT_S)
            await shared.heartbeat(LEASE_S)
            # Runs whose client left are kept while a client follows their thread: tell the
            # owners of the threads followed here, and learn which of ours are followed there.
            remote: list[tuple[str, str]] = []
            runs_here: list[tuple[str, str]] = []
            for key, thread in list(self._open.items()):
                if not thread.owned and thread.remote_runs:
                    # Followed runs of a process that died end when its lease has lapsed.
                    await self._try_claim(thread)
                if not thread.owned and any(f.attached for f in thread.followers):
                    remote.append(key)
                elif thread.owned and thread.live_runs:
                    runs_here.append(key)
            if remote:
                await shared.mark_followed(remote, LEASE_S)
            followed = await shared.followed(runs_here) if runs_here else set()
            for key in runs_here:
                here = self._open.get(key)
                if here is not None:
                    here.followed_elsewhere = key in followed

    async def _cancels(self, shared: SharedBackend) -> None:
        """Carry out the cancels clients of other processes ask of the runs live here."""
        while True:
            for user_id, thread_id, run_id in await shared.read_cancels(CANCEL_BLOCK_MS):
                thread = self._open.get((user_id, thread_id))  # the asker's verified user
                stop = None if thread is None else thread.live_runs.get(run_id)
                if stop is not None:
                    stop()

    async def _release_written(self) -> None:
        """Give up the threads no longer pinned, once what was appended to them is written."""
        assert self._shared is not None
        releases, self._releases = self._releases, {}
        async with self._lock:
            for key in releases:
                # Pinned (and claimed) again since: the thread is this process's still.
                if key not in self._open:
                    await self._shared.release(*key)

    async def _tail(self, shared: SharedBackend) -> None:
        """Read what other processes append to the threads pinned here that they own."""
        while True:
            cursors = {key: t.last_seq for key, t in self._open.items() if not t.owned}
            if not cursors:
                await self._tail_wake.wait()
                self._tail_wake = trio.Event()
                continue
            for entry in await shared.read_after(cursors, TAIL_BLOCK_MS, TAIL_COUNT):
                thread = self._open.get((entry.user_id, entry.thread_id))
                if thread is not None and not thread.owned:
                    thread.take_remote(entry)

    async def _own(self, thread: ThreadLog) -> None:
        """Return once this process owns ``thread`` (at once without a shared backend).

        Cancellation (the caller's deadline): the thread stays as it was.
        """
        # Polled: the lease is given up, or lapses, in another process.
        while not await self._try_claim(thread):  # noqa: ASYNC110
            await trio.sleep(CLAIM_RETRY_S)

    async def _try_claim(self, thread: ThreadLog) -> bool:
        """Own ``thread`` if no other live process does; whether this process owns it."""
        shared = self._shared
        if thread.owned:
            return True
        assert shared is not None
        await self.wait_written(self._given)
        async with self._lock:
            got = await shared.claim(thread.user_id, thread.thread_id)
            if isinstance(got, str):
                return False
            missed: list[Entry] = []
            if got.last_seq > thread.last_seq:
                # What the tail had not read yet: the followers get it before ours.
                missed = await self._backend.after(
                    thread.user_id, thread.thread_id, thread.last_seq, got.last_seq
                )
        if thread.owned:  # another task claimed it meanwhile
            return True
        for entry in missed:
            thread.take_remote(entry)
        thread.owned = True
        thread.last_seq, thread.first_seq = got.last_seq, got.first_seq
        thread.client_ids.update(got.client_ids)
        thread.remote_runs.clear()
        # Runs with no end that no live process owns: their process died.
        _end_interrupted(thread, got.open_runs)
        return True

    async def aclose(self) -> None:
        """Close the backend. Cancellation: the backend is closed all the same."""
        with trio.CancelScope(shield=True):
            await self._backend.aclose()

    async def _pruner(self) -> None:
        while True:
            await trio.sleep(PRUNE_EVERY_S)
            async with self._lock:
                dropped = await self._backend.prune(self.wall_clock())
            if dropped:
                self._log.info("pruned %d expired thread events", dropped)

    # -- pinning --------------------------------------------------------------

    async def _open_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = (user_id, thread_id)
        thread = self._open.get(key)
        if thread is None:
            # An unpinned thread may still have entries pending: its head must include them.
            await self.wait_written(self._given)
            owner: str | None = None
            if self._head_now is not None:
                # Not under the lock: 1,000 users' first messages each waited there for
                # the one before, two scheduler rounds apiece, under load 30 s and more.
                await trio.lowlevel.checkpoint()
                head = self._head_now(user_id, thread_id)
            else:
                head, owner = await self._read_head(user_id, thread_id, key)
            thread = self._open.get(key)  # another task may have opened it meanwhile
            if thread is None:
                thread = ThreadLog(
                    user_id=user_id,
                    thread_id=thread_id,
                    last_seq=head.last_seq,
                    first_seq=head.first_seq,
                    client_ids=dict(head.client_ids),
                    logs=self,
                )
                self._open[key] = thread
                if owner is None:
                    _end_interrupted(thread, head.open_runs)
                else:  # another process writes it: what it writes comes by the tail
                    thread.owned = False
                    thread.remote_runs.update(head.open_runs)
                    self._tail_wake.set()
        thread.refs += 1
        return thread

    async def _read_head(
        self, user_id: str, thread_id: str, key: tuple[str, str]
    ) -> tuple[ThreadHead, str | None]:
        """The thread's head from the backend, and the process that owns it if another
        does (a shared backend); one backend call at a time."""
        owner: str | None = None
        async with self._lock:
            started = time.perf_counter()
            if self._shared is None:
                head = await self._backend.head(user_id, thread_id)
            else:
                self._releases.pop(key, None)  # pinned again before it was given up
                got = await self._shared.claim(user_id, thread_id)
                if isinstance(got, str):
                    owner = got
                    head = await self._backend.head(user_id, thread_id)
                else:
                    head = got
            self._timed("head", started)
        return head, owner

    def _create_thread(self, user_id: str, thread_id: str) -> ThreadLog:
        key = (user_id, thread_id)
        thread = self._open.get(key)
        if thread is None:
            thread = ThreadLog(user_id, thread_id, 0, 1, {}, logs=self)
            # Shared: claimed before the first append, like any thread (UserThreads.own).
            thread.owned = self._shared is None
            self._open[key] = thread
        thread.refs += 1
        return thread

    def _release(self, thread: ThreadLog) -> None:
        thread.refs -= 1
        if thread.refs <= 0:
            key = (thread.user_id, thread.thread_id)
            self._open.pop(key, None)
            if self._shared is not None and thread.owned:
                # Given up by the writer once what was appended to it is written.
                self._releases[key] = self._given
                self._wake.set()

    # -- reading --------------------------------------------------------------

    async def _read(self, op: str, call: Callable[[], Any]) -> Any:
        # Reads see every append made before them.
        await self.wait_written(self._given)
        async with self._lock:
            started = time.perf_counter()
            result = await call()
            self._timed(op, started)
            return result

    def _timed(self, op: str, started: float) -> None:
        if self.observe is not None:
            self.observe(op, time.perf_counter() - started)


@attrs.frozen
class UserThreads:
    """The thread logs of one verified user: the only way a connection reaches the store."""

    _logs: ThreadLogs = attrs.field(alias="logs")
    user_id: str

    @property
    def epoch(self) -> str:
        return self._logs.epoch

    @property
    def durable(self) -> bool:
        """See :attr:`ThreadLogs.durable`."""
        return self._logs.durable

    def sendable(self, ticket: int) -> bool:
        return self._logs.sendable(ticket)

    def when_sendable(self, ticket: int, callback: Callable[[], None]) -> None:
        """See :meth:`ThreadLogs.when_sendable`."""
        self._logs.when_sendable(ticket, callback)

    async def wait_sendable(self, ticket: int) -> None:
        """See :meth:`ThreadLogs.wait_sendable`."""
        await self._logs.wait_sendable(ticket)

    async def open(self, thread_id: str) -> ThreadLog:
        """Pin ``thread_id`` of this user (loading its head); :meth:`release` it after.

        Cancellation: nothing is pinned.
        """
        return await self._logs._open_thread(self.user_id, thread_id)

    def create(self, thread_id: str) -> ThreadLog:
        """Pin a thread this server just named (nothing to read); :meth:`release` it after."""
        return self._logs._create_thread(self.user_id, thread_id)

    def release(self, thread: ThreadLog) -> None:
        assert thread.user_id == self.user_id
        self._logs._release(thread)

    async def cancel_remote(self, thread: ThreadLog, run_id: str) -> None:
        """Ask the process that owns ``thread`` to cancel ``run_id`` (one of its
        ``remote_runs``); its end arrives like its other events. Cancellation: may be asked."""
        assert thread.user_id == self.user_id
        shared = self._logs._shared
        if shared is not None:
            await shared.request_cancel(self.user_id, thread.thread_id, run_id)

    async def mark_followed(self, thread: ThreadLog) -> None:
        """Tell the owner of ``thread`` (another process) that a client follows it here:
        it keeps the runs whose own client left (renewed by the heartbeat from now on).
        Cancellation: told or not."""
        assert thread.user_id == self.user_id
        shared = self._logs._shared
        if shared is not None and not thread.owned:
            await shared.mark_followed([(self.user_id, thread.thread_id)], LEASE_S)

    async def followed_elsewhere(self, thread: ThreadLog) -> bool:
        """Whether a client of another process follows ``thread`` now. Cancellation: nothing."""
        assert thread.user_id == self.user_id
        shared = self._logs._shared
        if shared is None:
            return False
        key = (self.user_id, thread.thread_id)
        thread.followed_elsewhere = key in await shared.followed([key])
        return thread.followed_elsewhere

    async def own(self, thread: ThreadLog) -> None:
        """Return once this process may append to ``thread`` (another process sharing the
        store may be writing it: its runs end first). Cancellation: nothing changes; the
        caller sets the deadline.
        """
        assert thread.user_id == self.user_id
        await self._logs._own(thread)

    async def page(
        self, thread_id: str, before: int | None, limit: int
    ) -> tuple[Sequence[Entry], bool]:
        """A page of history (see :meth:`Backend.page`). Cancellation: nothing changes."""
        backend = self._logs._backend
        page: tuple[Sequence[Entry], bool] = await self._logs._read(
            "page", lambda: backend.page(self.user_id, thread_id, before, limit)
        )
        return page

    async def after(self, thread_id: str, after: int, limit: int) -> Sequence[Entry]:
        """Entries after ``after`` (see :meth:`Backend.after`). Cancellation: nothing changes."""
        backend = self._logs._backend
        entries: Sequence[Entry] = await self._logs._read(
            "after", lambda: backend.after(self.user_id, thread_id, after, limit)
        )
        return entries

    async def threads(self, limit: int) -> Sequence[ThreadSummary]:
        """This user's threads (see :meth:`Backend.threads`). Cancellation: nothing changes."""
        backend = self._logs._backend
        summaries: Sequence[ThreadSummary] = await self._logs._read(
            "threads", lambda: backend.threads(self.user_id, limit)
        )
        return summaries


async def open_thread_logs(
    spec: str,
    retention: Retention,
    *,
    max_memory_bytes: int = 0,
    redis: coredis.Redis[str] | None = None,
    log: logging.Logger | None = None,
) -> ThreadLogs:
    """The thread logs on the backend ``spec`` names (``memory``, ``sqlite:PATH`` or a Redis
    URL); ``max_memory_bytes`` bounds the memory backend. ``redis``: the process's client
    of the Redis a ``redis://`` spec names (:func:`~app.threads.connected_redis`), kept
    open by the caller; without it the backend opens a client of its own.

    Raises :class:`~app.threads.StoreConfigError` for a bad spec or file. The caller
    runs :meth:`ThreadLogs.run` and closes them with :meth:`ThreadLogs.aclose`.
    Cancellation: as :func:`~app.threads.open_backend`.
    """
    if spec == "memory":
        return ThreadLogs.in_memory(retention, max_bytes=max_memory_bytes)
    target = redis_target(spec)
    backend: Backend
    if redis is not None and target is not None:
        backend = await open_redis(redis, retention, prefix=target[1])
    else:
        backend = await open_backend(spec, retention)
    return ThreadLogs(backend, durable=True, ttl_s=retention.ttl_s, log=log)


def _end_interrupted(thread: ThreadLog, open_runs: Mapping[str, str]) -> None:
    """Give the runs a crashed server left without an end their terminal event.

    A thread not pinned has no run live in this process (a run pins its thread until its
    end is appended), so a run with no end in the log was cut by a crash of an earlier
    process: its end is written now, the next event of the run and of the thread.
    """
    for run_id, last_text in sorted(open_runs.items(), key=lambda item: item[1]):
        last = json.loads(last_text)
        seq = last.get("seq") if isinstance(last, dict) else None
        if not isinstance(seq, int):  # only its message: its agent_started was never written
            seq = 0
        wire = {
            "type": RunCancelled.TYPE,
            "reason": CancelReason.INTERRUPTED.value,
            "run_id": run_id,
            "thread_id": thread.thread_id,
            "seq": max(seq, 1) + 1,
        }

        def build(thread_seq: int, wire: dict[str, Any] = wire) -> bytes:
            return dump_json({**wire, "thread_seq": thread_seq})

        thread.append(RunCancelled.TYPE, run_id, build)
