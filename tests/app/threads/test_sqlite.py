"""What only the SQLite backend does: files, persistence, schema, durability."""

from __future__ import annotations

import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from app.threads import Entry, Retention, StoreConfigError, ThreadHead, _sqlite, open_sqlite

ROOT = Path(__file__).resolve().parents[3]


def entry(seq: int, *, thread: str = "t1", text: str | None = None) -> Entry:
    return Entry(
        user_id="alice",
        thread_id=thread,
        thread_seq=seq,
        kind="user_message" if seq % 2 else "agent_completed",
        run_id=f"run_{seq}",
        client_id=f"c{seq}" if seq % 2 else None,
        text=text if text is not None else f'{{"seq": {seq}}}',
        at=1000.0 + seq,
    )


def database_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


async def test_a_new_database_is_private_in_new_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "threads.db"
    store = await open_sqlite(path, Retention())
    try:
        await store.append([entry(1)])
        for file in database_files(path):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        with sqlite3.connect(path) as side:
            assert side.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert side.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        side.close()
    finally:
        await store.aclose()


async def test_entries_and_epoch_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    store = await open_sqlite(path, Retention())
    try:
        await store.append([entry(n) for n in range(1, 6)])
        await store.append([entry(1, thread="t2")])
        epoch, head = store.epoch, await store.head("alice", "t1")
    finally:
        await store.aclose()
    again = await open_sqlite(str(path), Retention(), synchronous="FULL")
    try:
        assert again.epoch == epoch
        assert await again.head("alice", "t1") == head
        assert head == ThreadHead(5, 1, {"c1": "run_1", "c3": "run_3", "c5": "run_5"})
        assert await again.after("alice", "t1", 0, 10) == [entry(n) for n in range(1, 6)]
        assert [s.thread_id for s in await again.threads("alice", 10)] == ["t1", "t2"]
    finally:
        await again.aclose()


async def test_a_recreated_database_has_a_new_epoch(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    store = await open_sqlite(path, Retention())
    await store.append([entry(1)])
    epoch = store.epoch
    await store.aclose()
    for file in database_files(path):
        file.unlink()
    store = await open_sqlite(path, Retention())
    try:
        assert store.epoch != epoch
        assert await store.head("alice", "t1") == ThreadHead(0, 1, {})
    finally:
        await store.aclose()


async def test_a_failed_batch_is_rolled_back_whole(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "threads.db", Retention())
    try:
        await store.append([entry(1)])
        # The third row breaks a NOT NULL constraint after two rows were inserted.
        bad = Entry("alice", "t1", 4, "agent_thinking", None, None, None, 1.0)  # type: ignore[arg-type]  # a row SQLite refuses, on purpose
        with pytest.raises(sqlite3.IntegrityError):
            await store.append([entry(2), entry(3), bad])
        assert await store.head("alice", "t1") == ThreadHead(1, 1, {"c1": "run_1"})
        await store.append([entry(2)])
        assert len(await store.after("alice", "t1", 0, 10)) == 2
    finally:
        await store.aclose()


async def test_an_append_cancelled_in_its_thread_is_written_whole(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "threads.db", Retention())
    try:
        batch = [entry(n, text="x" * 300) for n in range(1, 5001)]
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.append, batch)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert (await store.head("alice", "t1")).last_seq == 5000
    finally:
        await store.aclose()


async def test_prune_works_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "PRUNE_CHUNK", 5)
    store = await open_sqlite(tmp_path / "threads.db", Retention(ttl_s=1.0))
    try:
        await store.append([entry(n) for n in range(1, 13)])
        assert await store.prune(now=1011.5) == 10  # two full chunks, then an empty one
        assert await store.prune(now=2000.0) == 2
        assert await store.head("alice", "t1") == ThreadHead(12, 13, {})
    finally:
        await store.aclose()


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()


def _future_version(path: Path) -> None:
    _upgrade(path, "UPDATE schema_version SET version = 99")


def _no_epoch(path: Path) -> None:
    _upgrade(path, "DELETE FROM meta")


def _no_version(path: Path) -> None:
    _upgrade(path, "DELETE FROM schema_version")


def _upgrade(path: Path, statement: str) -> None:
    trio.run(_create, path)
    with sqlite3.connect(path) as conn:
        conn.execute(statement)
    conn.close()


async def _create(path: Path) -> None:
    await (await open_sqlite(path, Retention())).aclose()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: p.write_text("not a database, just text " * 100), "file is not a database"),
        (lambda p: p.mkdir(), "cannot open the thread store"),
        (_foreign, "is a SQLite database but not a thread store"),
        (_future_version, "has schema version 99, this server reads 1"),
        (_no_version, "has schema version None"),
        (_no_epoch, "has no epoch"),
    ],
    ids=["text-file", "directory", "foreign-db", "future-version", "no-version", "no-epoch"],
)
def test_what_is_not_a_thread_store_is_refused(
    tmp_path: Path, spoil: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "threads.db"
    spoil(path)

    async def main() -> None:
        with pytest.raises(StoreConfigError, match=message):
            await open_sqlite(path, Retention())

    trio.run(main)


async def test_a_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreConfigError, match="cannot open the thread store"):
        await open_sqlite(tmp_path / "file" / "threads.db", Retention())


#: Appends batches of 10 forever, printing the last seq after each append returns.
CHILD = """
import sys, trio
from app.threads import Entry, Retention, open_sqlite

async def main(path):
    store = await open_sqlite(path, Retention())
    seq = 0
    for _ in range(1_000_000):
        batch = [Entry("alice", "t1", seq + i, "agent_thinking", "run", None, "x" * 300, 1.0)
                 for i in range(1, 11)]
        await store.append(batch)
        seq += 10
        print(seq, flush=True)

trio.run(main, sys.argv[1])
"""


async def test_what_append_returned_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    output = bytearray()
    with trio.fail_after(40):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT
        )
        try:
            assert proc.stdout is not None
            while output.count(b"\n") < 50:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"the child exited early: {proc.poll()}"
                output += chunk
        finally:
            proc.kill()
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        while chunk := await proc.stdout.receive_some():  # what it printed before it died
            output += chunk
        await proc.stdout.aclose()
    # A line cut short by the kill is not a report.
    reported = [int(line) for line in output.split(b"\n")[:-1]]
    assert reported == list(range(10, 10 * len(reported) + 1, 10))
    store = await open_sqlite(path, Retention())
    try:
        head = await store.head("alice", "t1")
        assert head.last_seq >= reported[-1]
        kept = await store.after("alice", "t1", 0, head.last_seq)
        assert [e.thread_seq for e in kept] == list(range(1, head.last_seq + 1))
    finally:
        await store.aclose()


async def test_synchronous_is_normal_or_full(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be 'NORMAL' or 'FULL', got 'OFF'"):
        await open_sqlite(tmp_path / "threads.db", Retention(), synchronous="OFF")  # type: ignore[arg-type]  # refused at run time too
    assert not (tmp_path / "threads.db").exists()
