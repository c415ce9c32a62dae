"""The contract every thread-store backend keeps, run against each of them.

The Redis backend runs it with ``contiguous=False``: this contract lets a caller leave
gaps in a thread's numbering, which the Redis backend refuses by default (see
``test_redis.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from app.testing import RedisServer
from app.threads import (
    Backend,
    Entry,
    MemoryBackend,
    Retention,
    ThreadHead,
    ThreadSummary,
    open_redis,
    open_sqlite,
)

OpenBackend = Callable[..., Awaitable[Backend]]


def entry(
    seq: int,
    *,
    user: str = "alice",
    thread: str = "t1",
    kind: str = "agent_thinking",
    run_id: str | None = "run_1",
    client_id: str | None = None,
    at: float | None = None,
) -> Entry:
    text = json.dumps({"type": kind, "thread_seq": seq, "text": "x" * 40})
    return Entry(
        user_id=user,
        thread_id=thread,
        thread_seq=seq,
        kind=kind,
        run_id=run_id,
        client_id=client_id,
        text=text,
        at=1000.0 + seq if at is None else at,
    )


def seqs(entries: list[Entry]) -> list[int]:
    return [e.thread_seq for e in entries]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenBackend]:
    """Opens backends of the parametrized kind; closes them all at the end.

    Redis: each backend under a key prefix of its own (a store of its own, as a new
    SQLite file is).
    """
    opened: list[Backend] = []

    async def open_one(retention: Retention | None = None) -> Backend:
        retention = retention or Retention()
        backend: Backend
        if request.param == "memory":
            backend = MemoryBackend(retention)
        elif request.param == "sqlite":
            backend = await open_sqlite(tmp_path / "store" / f"{len(opened)}.db", retention)
        else:
            server: RedisServer = request.getfixturevalue("redis")
            prefix: str = request.getfixturevalue("redis_prefix")
            backend = await open_redis(
                server.url, retention, prefix=f"{prefix}-{len(opened)}", contiguous=False
            )
        opened.append(backend)
        return backend

    try:
        yield open_one
    finally:
        for backend in opened:
            await backend.aclose()


@pytest.fixture
async def store(open_store: OpenBackend) -> Backend:
    return await open_store()


async def test_head_of_an_unknown_thread(store: Backend) -> None:
    assert await store.head("alice", "nope") == ThreadHead(last_seq=0, first_seq=1, client_ids={})
    assert await store.page("alice", "nope", None, 10) == ([], False)
    assert await store.after("alice", "nope", 0, 10) == []
    assert await store.threads("alice", 10) == []


async def test_append_then_read_in_order(store: Backend) -> None:
    await store.append([entry(1), entry(2), entry(3)])
    await store.append([entry(4), entry(5)])
    await store.append([])
    got = await store.after("alice", "t1", 0, 100)
    assert got == [entry(n) for n in range(1, 6)]
    assert await store.head("alice", "t1") == ThreadHead(last_seq=5, first_seq=1, client_ids={})


async def test_after_is_oldest_first_and_limited(store: Backend) -> None:
    await store.append([entry(n) for n in range(1, 11)])
    assert seqs(await store.after("alice", "t1", 3, 4)) == [4, 5, 6, 7]
    assert seqs(await store.after("alice", "t1", 8, 100)) == [9, 10]
    assert await store.after("alice", "t1", 10, 100) == []
    assert seqs(await store.after("alice", "t1", -(2**70), 2)) == [1, 2]


async def test_page_is_the_newest_below_before_oldest_first(store: Backend) -> None:
    await store.append([entry(n) for n in range(1, 11)])
    page, more = await store.page("alice", "t1", None, 4)
    assert (seqs(page), more) == ([7, 8, 9, 10], True)
    page, more = await store.page("alice", "t1", 7, 4)
    assert (seqs(page), more) == ([3, 4, 5, 6], True)
    page, more = await store.page("alice", "t1", 3, 4)
    assert (seqs(page), more) == ([1, 2], False)
    page, more = await store.page("alice", "t1", 5, 4)
    assert (seqs(page), more) == ([1, 2, 3, 4], False)
    assert await store.page("alice", "t1", 1, 4) == ([], False)
    page, more = await store.page("alice", "t1", 2**70, 2**70)
    assert (seqs(page), more) == (list(range(1, 11)), False)
    assert len(await store.after("alice", "t1", 0, 2**70)) == 10
    assert len(await store.threads("alice", 2**70)) == 1


@pytest.mark.parametrize("limit", [0, -1])
async def test_limit_below_one_is_refused(store: Backend, limit: int) -> None:
    await store.append([entry(1)])
    with pytest.raises(ValueError, match="limit must be >= 1"):
        await store.page("alice", "t1", None, limit)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        await store.after("alice", "t1", 0, limit)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        await store.threads("alice", limit)


async def test_users_never_see_each_others_threads(store: Backend) -> None:
    await store.append([entry(1, user="alice"), entry(2, user="alice")])
    await store.append([entry(1, user="bob", client_id="c1", kind="user_message")])
    assert seqs(await store.after("alice", "t1", 0, 10)) == [1, 2]
    assert await store.after("bob", "t1", 0, 10) == [
        entry(1, user="bob", client_id="c1", kind="user_message")
    ]
    assert (await store.head("alice", "t1")).client_ids == {}
    assert await store.head("bob", "t1") == ThreadHead(1, 1, {"c1": "run_1"})
    assert [s.thread_id for s in await store.threads("bob", 10)] == ["t1"]
    assert await store.head("carol", "t1") == ThreadHead(0, 1, {})
    assert await store.threads("carol", 10) == []


async def test_one_batch_writes_several_threads(store: Backend) -> None:
    await store.append(
        [entry(1, thread="a"), entry(1, thread="b"), entry(2, thread="a"), entry(1, user="bob")]
    )
    assert (await store.head("alice", "a")).last_seq == 2
    assert (await store.head("alice", "b")).last_seq == 1
    assert (await store.head("bob", "t1")).last_seq == 1


async def test_head_maps_client_ids_of_user_messages(store: Backend) -> None:
    await store.append(
        [
            entry(1, kind="user_message", client_id="c1", run_id="run_a"),
            entry(2, kind="agent_started", client_id="not-a-message", run_id="run_a"),
            entry(3, kind="user_message", client_id=None, run_id="run_b"),
            entry(4, kind="user_message", client_id="c2", run_id="run_c"),
            entry(5, kind="user_message", client_id="c3", run_id=None),
        ]
    )
    head = await store.head("alice", "t1")
    assert head == ThreadHead(last_seq=5, first_seq=1, client_ids={"c1": "run_a", "c2": "run_c"})


@pytest.mark.parametrize(
    "batch",
    [
        [entry(1), entry(1)],
        [entry(2), entry(1)],
        [entry(1, thread="ok"), entry(3), entry(2)],
    ],
    ids=["repeated", "decreasing", "one-bad-thread"],
)
async def test_a_batch_out_of_order_writes_nothing(store: Backend, batch: list[Entry]) -> None:
    with pytest.raises(ValueError, match="is not above its last seq"):
        await store.append(batch)
    assert await store.head("alice", "t1") == ThreadHead(0, 1, {})
    assert await store.head("alice", "ok") == ThreadHead(0, 1, {})


async def test_append_at_or_below_last_seq_is_refused(store: Backend) -> None:
    await store.append([entry(1), entry(2)])
    with pytest.raises(ValueError, match="thread_seq 2 of thread 't1' is not above its last seq 2"):
        await store.append([entry(2)])
    await store.append([entry(5)])  # gaps are the caller's business
    assert seqs(await store.after("alice", "t1", 0, 10)) == [1, 2, 5]


async def test_max_events_keeps_the_newest_of_each_thread(open_store: OpenBackend) -> None:
    store = await open_store(Retention(max_events=3))
    await store.append(
        [
            entry(1, kind="user_message", client_id="c1"),
            entry(2),
            entry(1, thread="other"),
            entry(3),
            entry(4, kind="user_message", client_id="c4", run_id="run_4"),
            entry(5),
        ]
    )
    assert await store.head("alice", "t1") == ThreadHead(5, 3, {"c4": "run_4"})
    page, more = await store.page("alice", "t1", None, 10)
    assert (seqs(page), more) == ([3, 4, 5], False)
    assert seqs(await store.after("alice", "t1", 0, 10)) == [3, 4, 5]
    await store.append([entry(6)])
    await store.append([entry(7)])
    assert await store.head("alice", "t1") == ThreadHead(7, 5, {})
    assert seqs(await store.after("alice", "other", 0, 10)) == [1]


async def test_prune_drops_entries_older_than_the_ttl(open_store: OpenBackend) -> None:
    store = await open_store(Retention(ttl_s=10.0))
    await store.append(
        [
            entry(1, at=100.0, kind="user_message", client_id="c1"),
            entry(2, at=105.0),
            entry(3, at=112.0, kind="user_message", client_id="c3"),
        ]
    )
    await store.append([entry(1, thread="young", at=150.0)])
    assert await store.prune(now=110.0) == 0  # at == cutoff is kept
    assert await store.prune(now=115.5) == 2
    assert await store.head("alice", "t1") == ThreadHead(3, 3, {"c3": "run_1"})
    assert await store.page("alice", "t1", None, 10) == (
        [entry(3, at=112.0, kind="user_message", client_id="c3")],
        False,
    )
    assert await store.prune(now=130.0) == 1
    # The thread keeps its numbering but no longer shows in the list.
    assert await store.head("alice", "t1") == ThreadHead(last_seq=3, first_seq=4, client_ids={})
    assert [s.thread_id for s in await store.threads("alice", 10)] == ["young"]
    await store.append([entry(4, at=131.0)])
    assert await store.head("alice", "t1") == ThreadHead(4, 4, {})


async def test_prune_without_a_ttl_drops_nothing(store: Backend) -> None:
    await store.append([entry(1, at=0.0)])
    assert await store.prune(now=1e12) == 0
    assert (await store.head("alice", "t1")).first_seq == 1


async def test_threads_most_recently_updated_first(store: Backend) -> None:
    await store.append([entry(1, thread="a", at=10.0), entry(1, thread="b", at=30.0)])
    await store.append([entry(1, thread="c", at=20.0), entry(2, thread="a", at=40.0)])
    await store.append([entry(1, thread="d", at=30.0), entry(1, thread="z", user="bob", at=99.0)])
    assert await store.threads("alice", 10) == [
        ThreadSummary(thread_id="a", last_seq=2, updated_at=40.0),
        ThreadSummary(thread_id="b", last_seq=1, updated_at=30.0),  # ties: by thread id
        ThreadSummary(thread_id="d", last_seq=1, updated_at=30.0),
        ThreadSummary(thread_id="c", last_seq=1, updated_at=20.0),
    ]
    assert [s.thread_id for s in await store.threads("alice", 2)] == ["a", "b"]
    assert [s.thread_id for s in await store.threads("bob", 2)] == ["z"]


async def test_epoch_is_stable_for_one_store(open_store: OpenBackend) -> None:
    one, two = await open_store(), await open_store()
    epoch = one.epoch
    assert isinstance(epoch, str)
    assert len(epoch) >= 16
    await one.append([entry(1)])
    await one.prune(now=1e12)
    assert one.epoch == epoch
    assert two.epoch != epoch


async def test_aclose_is_idempotent_and_final(store: Backend) -> None:
    await store.append([entry(1)])
    await store.aclose()
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.head("alice", "t1")
    with pytest.raises(trio.ClosedResourceError):
        await store.append([entry(2)])
    with pytest.raises(trio.ClosedResourceError):
        await store.page("alice", "t1", None, 1)
    with pytest.raises(trio.ClosedResourceError):
        await store.after("alice", "t1", 0, 1)
    with pytest.raises(trio.ClosedResourceError):
        await store.threads("alice", 1)
    with pytest.raises(trio.ClosedResourceError):
        await store.prune(now=0.0)


async def test_aclose_completes_even_when_cancelled(store: Backend) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.head("alice", "t1")


async def test_a_cancelled_append_happened_whole_or_not_at_all(store: Backend) -> None:
    batch = [entry(n) for n in range(1, 501)]
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append(batch)
    assert await store.head("alice", "t1") == ThreadHead(0, 1, {})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.append, batch)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    last_seq = (await store.head("alice", "t1")).last_seq
    assert last_seq in (0, 500)
    assert len(await store.after("alice", "t1", 0, 1000)) == last_seq


async def test_head_names_the_runs_without_an_end(store: Backend) -> None:
    await store.append(
        [
            entry(1, kind="user_message", run_id="run_a"),
            entry(2, kind="agent_started", run_id="run_a"),
            entry(3, kind="agent_completed", run_id="run_a"),
            entry(4, kind="user_message", run_id="run_b"),
            entry(5, kind="agent_started", run_id="run_b"),
            entry(6, kind="agent_thinking", run_id="run_b"),
            entry(7, kind="agent_thinking", run_id=None),
            entry(8, kind="run_cancelled", run_id="run_c"),
        ]
    )
    head = await store.head("alice", "t1")
    assert head.open_runs == {"run_b": entry(6, kind="agent_thinking", run_id="run_b").text}
