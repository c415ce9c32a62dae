"""The ``sqlite`` backend: thread logs in one SQLite file, with the stdlib's ``sqlite3``.

Durability: the database is in WAL mode with ``synchronous=NORMAL`` by default. A
transaction that committed survives the process being killed (SIGKILL, a crash): its
pages are in the WAL file, handed to the kernel before ``COMMIT`` returns. A power
loss or kernel crash may lose the last transactions (not corrupt the file): NORMAL
syncs the WAL only at checkpoints. ``synchronous="FULL"`` syncs it at every commit,
surviving power loss too, at the price of one ``fsync`` per :meth:`SQLiteBackend.append`.

Threads: ``sqlite3`` blocks, so every call runs in a worker thread
(:func:`trio.to_thread.run_sync`, not abandoned on cancel) while a :class:`trio.Lock`
keeps the one connection to one worker at a time.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import trio

from ._backend import Entry, Retention, ThreadHead, ThreadSummary
from ._common import StoreConfigError, check_limit, last_entries

__all__ = ["SQLiteBackend", "Synchronous", "open_sqlite"]

_T = TypeVar("_T")

#: ``PRAGMA synchronous`` values offered: see the module docstring.
Synchronous = Literal["NORMAL", "FULL"]

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # One row per thread ever written: its numbering survives its entries being pruned.
    """CREATE TABLE threads (
        user_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (user_id, thread_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX threads_by_update ON threads (user_id, updated_at DESC, thread_id)",
    # A rowid table (entries' text can be large); the primary key is its own index.
    """CREATE TABLE entries (
        user_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        thread_seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT,
        client_id TEXT,
        text TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (user_id, thread_id, thread_seq)
    )""",
    """CREATE INDEX entries_client_ids ON entries (user_id, thread_id, client_id, run_id)
        WHERE kind = 'user_message' AND client_id IS NOT NULL""",
    "CREATE INDEX entries_by_time ON entries (at)",
)

_COLUMNS: Final = "user_id, thread_id, thread_seq, kind, run_id, client_id, text, at"

#: SQLite's largest integer: stands in for "no bound" and clamps callers' bounds and limits.
_MAX_SEQ: Final = 2**63 - 1

#: Entries one prune transaction deletes at most: appends wait for one chunk, not all.
PRUNE_CHUNK: Final = 5000


async def open_sqlite(
    path: str | os.PathLike[str],
    retention: Retention,
    *,
    synchronous: Synchronous = "NORMAL",
) -> SQLiteBackend:
    """Open the thread store at ``path``, creating it (mode 0600) and its parent
    directories if needed; a new database draws a new random epoch.

    Raises :class:`~app.threads.StoreConfigError` if the file cannot be opened or is
    not a thread store of this schema version. Cancellation: the opening runs to its
    end in its worker thread and the backend is returned; the caller's next checkpoint
    raises the cancellation, so open it where it is closed in a ``finally``.
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
    conn, epoch = await trio.to_thread.run_sync(
        _connect, Path(path), synchronous, abandon_on_cancel=False
    )
    return SQLiteBackend(conn, epoch, retention)


class SQLiteBackend:
    """Thread logs in a SQLite database; made by :func:`open_sqlite`.

    ``append`` is one transaction and applies ``max_events``; :meth:`prune` applies
    ``ttl_s``. A call cancelled while its worker thread runs completes first (it is
    written whole, or rolled back whole on an error); cancelled before, it did
    nothing. After :meth:`aclose` every call raises :class:`trio.ClosedResourceError`.
    """

    def __init__(self, conn: sqlite3.Connection, epoch: str, retention: Retention) -> None:
        self.retention = retention
        self._conn: sqlite3.Connection | None = conn
        self._epoch = epoch
        self._lock = trio.Lock()

    @property
    def epoch(self) -> str:
        """Drawn at random when the database was created; stored in it."""
        return self._epoch

    async def head(self, user_id: str, thread_id: str) -> ThreadHead:
        """Where the thread stands (one read transaction)."""
        return await self._run(lambda conn: _head(conn, user_id, thread_id))

    async def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` and apply ``max_events`` to their threads, in one
        transaction. Raises :class:`ValueError`, writing nothing, if a thread's
        ``thread_seq`` values do not rise above its ``last_seq``.
        """
        if entries:
            batch = list(entries)
            await self._run(lambda conn: _append(conn, batch, self.retention.max_events))

    async def page(
        self, user_id: str, thread_id: str, before: int | None, limit: int
    ) -> tuple[list[Entry], bool]:
        """The newest ``limit`` entries below ``before``, oldest first, and whether
        older ones remain.
        """
        check_limit(limit)
        bound = _MAX_SEQ if before is None else min(before, _MAX_SEQ)
        rows = await self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE user_id = ? AND thread_id = ?"
                " AND thread_seq < ? ORDER BY thread_seq DESC LIMIT ?",
                (user_id, thread_id, bound, min(limit, _MAX_SEQ - 1) + 1),
            ).fetchall()
        )
        return [_entry(row) for row in reversed(rows[:limit])], len(rows) > limit

    async def after(self, user_id: str, thread_id: str, after: int, limit: int) -> list[Entry]:
        """The oldest ``limit`` entries above ``after``."""
        check_limit(limit)
        bound = max(after, -_MAX_SEQ)
        rows = await self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE user_id = ? AND thread_id = ?"
                " AND thread_seq > ? ORDER BY thread_seq LIMIT ?",
                (user_id, thread_id, bound, min(limit, _MAX_SEQ)),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def threads(self, user_id: str, limit: int) -> list[ThreadSummary]:
        """The user's threads holding entries, newest update first (ties by thread id)."""
        check_limit(limit)
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT thread_id, last_seq, updated_at FROM threads AS t WHERE user_id = ?"
                " AND EXISTS (SELECT 1 FROM entries AS e"
                " WHERE e.user_id = t.user_id AND e.thread_id = t.thread_id)"
                " ORDER BY updated_at DESC, thread_id LIMIT ?",
                (user_id, min(limit, _MAX_SEQ)),
            ).fetchall()
        )
        return [ThreadSummary(thread_id=r[0], last_seq=r[1], updated_at=r[2]) for r in rows]

    async def prune(self, now: float) -> int:
        """Drop the entries with ``at < now - ttl_s`` (none when ``ttl_s`` is 0), in
        transactions of at most :data:`PRUNE_CHUNK` entries so appends are not held up.

        Cancellation: the chunks already committed stay dropped; the rest is dropped
        by the next prune.
        """
        if self.retention.ttl_s <= 0:
            async with self._lock:
                self._open_conn()
            return 0
        cutoff = now - self.retention.ttl_s
        dropped = 0
        while True:
            count = await self._run(lambda conn: _prune_chunk(conn, cutoff))
            dropped += count
            if count < PRUNE_CHUNK:
                return dropped

    async def aclose(self) -> None:
        """Close the connection (the last one checkpoints the WAL). Idempotent; shielded
        from cancellation so the file is always released.
        """
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close)

    async def _run(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            return await trio.to_thread.run_sync(call, self._open_conn(), abandon_on_cancel=False)

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise trio.ClosedResourceError("the thread store is closed")
        return self._conn


# Everything below runs in a worker thread.


def _connect(path: Path, synchronous: Synchronous) -> tuple[sqlite3.Connection, str]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file with its final mode: SQLite gives its -wal and -shm the same.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreConfigError(f"cannot open the thread store {str(path)!r}: {exc}") from exc
    try:
        return conn, _prepare(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise


def _prepare(conn: sqlite3.Connection, path: Path, synchronous: Synchronous) -> str:
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreConfigError(
                f"the thread store {str(path)!r} cannot use WAL mode (journal mode {mode!r})"
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        with _transaction(conn):
            return _schema(conn, path)
    except sqlite3.Error as exc:
        raise StoreConfigError(f"cannot open the thread store {str(path)!r}: {exc}") from exc


def _schema(conn: sqlite3.Connection, path: Path) -> str:
    """The epoch, after creating the schema in an empty database or checking it."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        epoch = secrets.token_urlsafe(16)
        conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
        return epoch
    if not {"schema_version", "meta"} <= tables:
        raise StoreConfigError(f"{str(path)!r} is a SQLite database but not a thread store")
    version = conn.execute("SELECT version FROM schema_version").fetchone()
    if version is None or version[0] != SCHEMA_VERSION:
        raise StoreConfigError(
            f"the thread store {str(path)!r} has schema version "
            f"{None if version is None else version[0]}, this server reads {SCHEMA_VERSION}"
        )
    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if epoch is None:
        raise StoreConfigError(f"the thread store {str(path)!r} has no epoch")
    return str(epoch[0])


@contextmanager
def _transaction(conn: sqlite3.Connection, kind: str = "IMMEDIATE") -> Iterator[None]:
    conn.execute(f"BEGIN {kind}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT may have rolled back already
            conn.rollback()
        raise
    conn.execute("COMMIT")


def _entry(row: Any) -> Entry:
    return Entry(*row)


def _last_seq(conn: sqlite3.Connection, user_id: str, thread_id: str) -> int:
    row = conn.execute(
        "SELECT last_seq FROM threads WHERE user_id = ? AND thread_id = ?", (user_id, thread_id)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _head(conn: sqlite3.Connection, user_id: str, thread_id: str) -> ThreadHead:
    key = (user_id, thread_id)
    with _transaction(conn, "DEFERRED"):  # one snapshot for the three reads
        last_seq = _last_seq(conn, *key)
        if last_seq == 0:
            return ThreadHead(last_seq=0, first_seq=1, client_ids={})
        first = conn.execute(
            "SELECT min(thread_seq) FROM entries WHERE user_id = ? AND thread_id = ?", key
        ).fetchone()[0]
        client_ids = conn.execute(
            "SELECT client_id, run_id FROM entries WHERE user_id = ? AND thread_id = ?"
            " AND kind = 'user_message' AND client_id IS NOT NULL AND run_id IS NOT NULL",
            key,
        ).fetchall()
        open_runs = conn.execute(
            "SELECT e.run_id, e.text FROM entries e JOIN ("
            " SELECT run_id, max(thread_seq) AS last FROM entries"
            " WHERE user_id = ? AND thread_id = ? AND run_id IS NOT NULL GROUP BY run_id"
            " HAVING sum(kind IN ('agent_completed', 'agent_error', 'run_cancelled')) = 0"
            ") o ON e.user_id = ? AND e.thread_id = ? AND e.thread_seq = o.last",
            key + key,
        ).fetchall()
    return ThreadHead(
        last_seq=last_seq,
        first_seq=last_seq + 1 if first is None else first,
        client_ids=dict(client_ids),
        open_runs=dict(open_runs),
    )


def _append(conn: sqlite3.Connection, entries: list[Entry], max_events: int) -> None:
    with _transaction(conn):
        newest = last_entries(entries, lambda key: _last_seq(conn, *key))
        conn.executemany(
            f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.user_id, e.thread_id, e.thread_seq, e.kind, e.run_id, e.client_id, e.text, e.at)
                for e in entries
            ],
        )
        for (user_id, thread_id), last in newest.items():
            conn.execute(
                "INSERT INTO threads (user_id, thread_id, last_seq, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, thread_id) DO UPDATE"
                " SET last_seq = excluded.last_seq, updated_at = excluded.updated_at",
                (user_id, thread_id, last.thread_seq, last.at),
            )
            if max_events > 0:
                conn.execute(
                    "DELETE FROM entries WHERE user_id = ? AND thread_id = ? AND thread_seq <= ?",
                    (user_id, thread_id, last.thread_seq - max_events),
                )


def _prune_chunk(conn: sqlite3.Connection, cutoff: float) -> int:
    with _transaction(conn):
        return conn.execute(
            "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE at < ? LIMIT ?)",
            (cutoff, PRUNE_CHUNK),
        ).rowcount
