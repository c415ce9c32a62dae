"""What a thread store's storage engine does: the interface both backends implement.

A backend keeps the event log of every (user, thread): entries numbered by
``thread_seq`` from 1, each the event's wire JSON as it was sent. It does no
numbering, no caching and no waiting of its own: :mod:`app.threads._logs` assigns
``thread_seq``, batches appends (one writer, group commit) and decides when a frame
may be sent. Every method is keyed by the *verified* user id first: a thread of
another user is simply not there.

The contract test suite (``tests/app/threads/test_contract.py``) runs against every
backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, Protocol, runtime_checkable

import attrs

__all__ = [
    "TERMINAL_KINDS",
    "Backend",
    "Entry",
    "Retention",
    "SharedBackend",
    "ThreadHead",
    "ThreadSummary",
]

#: The kinds of entry that end a run.
TERMINAL_KINDS: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})


class Entry(NamedTuple):
    """One event of a thread's log.

    A named tuple rather than an attrs class: one is made per event sent, on the hot
    path, and a tuple is built four times faster. Immutable all the same.
    """

    user_id: str
    thread_id: str
    thread_seq: int
    #: The event type (``user_message``, ``agent_started``, ...).
    kind: str
    run_id: str | None
    #: Only on ``user_message`` entries: the client's id of the message, if it gave one.
    client_id: str | None
    #: The wire JSON of the event, exactly as sent.
    text: str
    #: Wall-clock seconds (``time.time()``) when it was appended.
    at: float


@attrs.frozen
class ThreadHead:
    """Where a thread stands: what :mod:`app.threads._logs` needs to append to it."""

    #: The last ``thread_seq`` ever given in the thread (0: no such thread).
    last_seq: int
    #: The oldest ``thread_seq`` still retained (``last_seq + 1`` when none is).
    first_seq: int
    #: ``client_id -> run_id`` of the retained ``user_message`` entries.
    client_ids: Mapping[str, str]
    #: ``run_id -> the text of its last entry`` of the runs with no terminal event
    #: (``agent_completed``, ``agent_error``, ``run_cancelled``) among the retained entries.
    #: Not part of equality: a head is "where the thread stands" (its numbering).
    open_runs: Mapping[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class ThreadSummary:
    """One line of a user's thread list."""

    thread_id: str
    last_seq: int
    #: Wall-clock seconds of the last entry.
    updated_at: float


@attrs.frozen
class Retention:
    """How much of each thread a backend keeps. 0 means no limit."""

    max_events: int = 0
    ttl_s: float = 0.0


class Backend(Protocol):
    """A storage engine of thread logs (``memory`` or ``sqlite``).

    Calls are never concurrent with each other: the thread logs serialize them.
    Cancellation: a cancelled call either happened whole or not at all.
    """

    @property
    def epoch(self) -> str:
        """Changes only when the store lost data (a new memory store, a new database)."""
        ...

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        """Where ``thread_id`` of ``user_id`` stands (``last_seq == 0`` if unknown)."""
        ...

    async def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` in one transaction; when it returns they survive the
        process being killed (SIGKILL). Applies ``max_events`` to the threads written.
        """
        ...

    async def page(
        self, user_id: str, thread_id: str, before: int | None, limit: int
    ) -> tuple[list[Entry], bool]:
        """Up to ``limit`` entries with ``thread_seq < before`` (any when ``None``),
        the newest such ones, returned oldest first; and whether older ones remain.
        """
        ...

    async def after(self, user_id: str, thread_id: str, after: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries with ``thread_seq > after``, oldest first."""
        ...

    async def threads(self, user_id: str, limit: int) -> list[ThreadSummary]:
        """The user's threads that still hold entries, most recently updated first."""
        ...

    async def prune(self, now: float) -> int:
        """Drop entries older than ``ttl_s`` at wall-clock ``now``; return how many."""
        ...

    async def aclose(self) -> None:
        """Release files and connections. Idempotent."""
        ...


@runtime_checkable
class SharedBackend(Backend, Protocol):
    """A backend several server processes share (Redis): a thread is written by one process
    at a time, its *owner*, and the others read what it writes as it is written.

    Ownership is a lease: it holds while its process renews :meth:`heartbeat`; the thread
    of a process that died can be claimed once its heartbeat expired, and its runs with no
    end are then ended ``interrupted``. :meth:`Backend.append` refuses a thread another live
    process owns, and an entry whose ``thread_seq`` is not the next: a fence, not a lock.
    """

    @property
    def worker_id(self) -> str:
        """This process's name among those sharing the backend."""
        ...

    async def heartbeat(self, ttl_s: float) -> None:
        """Keep this process's leases for ``ttl_s`` more seconds."""
        ...

    async def claim(self, user_id: str, thread_id: str) -> ThreadHead | str:
        """Own ``thread_id`` and return its head, or the id of the live process that owns it."""
        ...

    async def release(self, user_id: str, thread_id: str) -> None:
        """Give up the ownership of ``thread_id`` (if this process has it)."""
        ...

    async def read_after(
        self, cursors: Mapping[tuple[str, str], int], block_ms: int, count: int
    ) -> list[Entry]:
        """Entries after each ``(user_id, thread_id)``'s ``thread_seq`` cursor, waiting up to
        ``block_ms`` for one; ``[]`` when none came. May run beside the other calls."""
        ...

    async def mark_followed(self, threads: Sequence[tuple[str, str]], ttl_s: float) -> None:
        """Say that a client here follows these ``(user_id, thread_id)`` for ``ttl_s``: their
        owner keeps a run whose own client left (as a follower in its process would)."""
        ...

    async def followed(self, threads: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``threads`` a client of another process follows now."""
        ...

    async def request_cancel(self, user_id: str, thread_id: str, run_id: str) -> None:
        """Ask the owner of ``thread_id`` (whichever process it is) to cancel ``run_id``."""
        ...

    async def read_cancels(self, block_ms: int) -> list[tuple[str, str, str]]:
        """``(user_id, thread_id, run_id)`` cancels asked since the last call (from the first
        call's time), waiting up to ``block_ms`` for one. May run beside the other calls."""
        ...
