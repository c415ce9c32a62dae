"""What the backends check the same way: limits, the order of a batch, a bad store spec;
the errors of a store shared by several processes (Redis)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from ._backend import Entry

__all__ = [
    "NotOwner",
    "SeqConflict",
    "StoreConfigError",
    "StoreError",
    "StoreLost",
    "ThreadKey",
    "check_limit",
    "last_entries",
]

#: ``(user_id, thread_id)``: one thread of one user.
ThreadKey: TypeAlias = tuple[str, str]


class StoreConfigError(ValueError):
    """The thread store cannot be opened as configured (bad spec, foreign database)."""


def check_limit(limit: int) -> None:
    """Refuse a ``limit`` below 1: a caller's bug, and SQLite would read ``-1`` as "no limit"."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def last_entries(
    entries: Sequence[Entry], last_seq_of: Callable[[ThreadKey], int]
) -> dict[ThreadKey, Entry]:
    """The newest entry of each thread in ``entries``, after checking the batch's order.

    In each thread the ``thread_seq`` values must rise strictly, starting above what
    ``last_seq_of`` says the thread already holds (gaps are allowed). Raises
    :class:`ValueError` before anything is written otherwise: a batch is written whole
    or not at all.
    """
    newest: dict[ThreadKey, Entry] = {}
    for entry in entries:
        key = (entry.user_id, entry.thread_id)
        previous = newest.get(key)
        floor = previous.thread_seq if previous is not None else last_seq_of(key)
        if entry.thread_seq <= floor:
            raise ValueError(
                f"thread_seq {entry.thread_seq} of thread {entry.thread_id!r} is not above "
                f"its last seq {floor}"
            )
        newest[key] = entry
    return newest


class StoreError(Exception):
    """A write the store refused: the caller's view of a thread is not the store's."""


class SeqConflict(StoreError, ValueError):
    """A thread's ``thread_seq`` does not follow what the store holds: another process
    wrote the thread, or the store lost its newest entries. Nothing of the batch is written.
    """

    def __init__(self, message: str, *, user_id: str, thread_id: str) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.thread_id = thread_id


class NotOwner(StoreError):
    """Another live worker owns the thread (shared Redis): nothing of the batch is written."""

    def __init__(self, message: str, *, user_id: str, thread_id: str, owner: str) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.thread_id = thread_id
        self.owner = owner


class StoreLost(StoreError):
    """The store's epoch changed under a running backend: it lost its data (Redis flushed or
    replaced). Nothing of the batch is written; a new backend has the new epoch.
    """
