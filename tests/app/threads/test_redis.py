"""What only the Redis backend does: its key layout, stores shared by several processes
(continuity, epochs, claims, fencing, blocking reads), and what the contract cannot see.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import coredis
import pytest
import trio

from app.testing import RedisServer, redis_server
from app.threads import (
    Backend,
    Entry,
    MemoryBackend,
    NotOwner,
    RedisBackend,
    Retention,
    SeqConflict,
    StoreError,
    StoreLost,
    ThreadHead,
    _redis,
    _redis_lua,
    open_redis,
    open_thread_logs,
)

OpenRedis = Callable[..., Awaitable[RedisBackend]]

#: Bound on any wait of these tests.
WAIT_S: Final = 5.0


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
    text = json.dumps({"type": kind, "thread_seq": seq})
    return Entry(
        user, thread, seq, kind, run_id, client_id, text, 1000.0 + seq if at is None else at
    )


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A client of the test's own, to look at the keys."""
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
        yield client


@pytest.fixture
async def open_store(redis: RedisServer, redis_prefix: str) -> AsyncIterator[OpenRedis]:
    """Opens backends on the test's prefix (one store: several "processes"); closes them."""
    opened: list[RedisBackend] = []

    async def open_one(
        retention: Retention | None = None,
        *,
        worker_id: str | None = None,
        contiguous: bool = True,
        prefix: str = redis_prefix,
    ) -> RedisBackend:
        backend = await open_redis(
            redis.url,
            retention or Retention(),
            prefix=prefix,
            worker_id=worker_id,
            contiguous=contiguous,
        )
        opened.append(backend)
        return backend

    try:
        yield open_one
    finally:
        for backend in opened:
            await backend.aclose()


# -- key layout -------------------------------------------------------------------------


KEY_FUNCTIONS: Final = [
    _redis.stream_key,
    _redis.meta_key,
    _redis.client_ids_key,
    _redis.open_runs_key,
    _redis.run_seqs_key,
    _redis.owner_key,
]


@pytest.mark.parametrize("key", KEY_FUNCTIONS, ids=lambda f: f.__name__)
def test_user_ids_with_colons_never_share_a_key(key: Callable[[str, str, str], str]) -> None:
    assert key("p", "a", "b:c") != key("p", "a:b", "c")
    assert key("p", "a", "b:c") == key("p", "a", "b:c")  # pure: the same every time
    assert _redis.threads_key("p", "a") != _redis.threads_key("p", "a:1")
    every = {f("p", u, t) for f in KEY_FUNCTIONS for u, t in [("a", "b:c"), ("a:b", "c")]}
    assert len(every) == 2 * len(KEY_FUNCTIONS)


def test_the_documented_layout() -> None:
    assert _redis.stream_key("enclave", "a:b", "t") == "enclave:s:3:a:b:t"
    assert _redis.meta_key("x", "é", "t") == "x:m:1:é:t"
    assert _redis.owner_key("x", "u", "t") == "x:o:1:u:t"
    assert _redis.threads_key("x", "u") == "x:u:1:u"
    assert _redis.worker_key("x", "w1") == "x:w:w1"
    assert _redis.epoch_key("x") == "x:epoch"
    assert _redis.prune_index_key("x") == "x:x"


async def test_every_script_compiles(client: coredis.Redis[str]) -> None:
    # coredis swallows a script's compile error and reports NOSCRIPT: say it plainly here.
    for name in _redis_lua.__all__:
        assert len(await client.script_load(getattr(_redis_lua, name))) == 40, name


async def test_entries_are_stream_messages_as_documented(
    open_store: OpenRedis, client: coredis.Redis[str], redis_prefix: str
) -> None:
    store = await open_store()
    await store.append(
        [
            entry(1, user="a:b", kind="user_message", client_id="c1", at=12.5),
            entry(2, user="a:b", run_id=None, at=13.0),
        ]
    )
    stream = await client.xrange(f"{redis_prefix}:s:3:a:b:t1")
    assert [m.identifier for m in stream] == ["1-0", "2-0"]
    assert dict(stream[0].field_values) == {
        "k": "user_message",
        "r": "run_1",
        "c": "c1",
        "x": entry(1, kind="user_message").text,
        "a": "12.5",
    }
    assert dict(stream[1].field_values)["r"] == ""
    assert await client.hgetall(f"{redis_prefix}:m:3:a:b:t1") == {
        "last_seq": "2",
        "updated_at": "13.0",
    }
    assert await client.hgetall(f"{redis_prefix}:c:3:a:b:t1") == {"c1": "run_1"}
    assert await client.zrange(f"{redis_prefix}:u:3:a:b", 0, -1) == ("t1",)
    assert await client.get(f"{redis_prefix}:epoch") == store.epoch


# -- one store, several processes --------------------------------------------------------


async def test_a_second_backend_sees_the_data_and_the_epoch(open_store: OpenRedis) -> None:
    one = await open_store()
    await one.append([entry(1, kind="user_message", client_id="c1"), entry(2)])
    two = await open_store()
    assert two.epoch == one.epoch
    assert two.worker_id != one.worker_id
    assert await two.head("alice", "t1") == ThreadHead(2, 1, {"c1": "run_1"})
    assert await two.after("alice", "t1", 0, 10) == await one.after("alice", "t1", 0, 10)
    other = await open_store(prefix=f"{one.prefix}-other")
    assert other.epoch != one.epoch
    assert await other.head("alice", "t1") == ThreadHead(0, 1, {})


async def test_a_flushed_redis_has_a_new_epoch_and_the_old_backend_stops(
    redis: RedisServer,
) -> None:
    with redis_server() as own:  # FLUSHALL on a server of this test only
        old = await open_redis(own.url, Retention())
        try:
            await old.append([entry(1)])
            await old.client.flushall()
            new = await open_redis(own.url, Retention())
            try:
                assert new.epoch != old.epoch
                with pytest.raises(StoreLost, match="epoch"):
                    await old.append([entry(1, thread="t2")])
                assert await new.head("alice", "t2") == ThreadHead(0, 1, {})
                await new.append([entry(1)])  # the new store numbers from 1 again
            finally:
                await new.aclose()
        finally:
            await old.aclose()


async def test_a_write_that_does_not_follow_the_store_is_a_conflict(open_store: OpenRedis) -> None:
    one, two = await open_store(), await open_store()
    await one.append([entry(1), entry(2)])
    with pytest.raises(SeqConflict) as caught:  # two's view is stale: one wrote meanwhile
        await two.append([entry(1, thread="fine"), entry(1), entry(2)])
    assert (caught.value.user_id, caught.value.thread_id) == ("alice", "t1")
    assert "thread_seq 1 of thread 't1' is not above its last seq 2" in str(caught.value)
    assert isinstance(caught.value, StoreError)
    assert await one.head("alice", "fine") == ThreadHead(0, 1, {})  # nothing of the batch
    with pytest.raises(SeqConflict, match="thread_seq 5 of thread 't1' is not next to its last"):
        await two.append([entry(5)])  # a gap: the store lost entries 3 and 4
    with pytest.raises(
        ValueError, match="thread_seq 6 of thread 't1' is not next to its last seq 4"
    ):
        await two.append([entry(3), entry(4, thread="fine"), entry(4), entry(6)])
    await two.append([entry(3), entry(1, thread="fine"), entry(4)])
    assert (await one.head("alice", "t1")).last_seq == 4


async def test_without_contiguous_gaps_are_allowed(open_store: OpenRedis) -> None:
    store = await open_store(contiguous=False)
    await store.append([entry(1), entry(3)])
    await store.append([entry(7)])
    assert [e.thread_seq for e in await store.after("alice", "t1", 0, 10)] == [1, 3, 7]


# -- retention ---------------------------------------------------------------------------


async def test_trimming_forgets_the_runs_and_client_ids_it_drops(
    open_store: OpenRedis, client: coredis.Redis[str]
) -> None:
    store = await open_store(Retention(max_events=2))
    await store.append(
        [
            entry(1, kind="user_message", client_id="c1", run_id="run_a"),
            entry(2, kind="agent_started", run_id="run_a"),
        ]
    )
    head = await store.head("alice", "t1")
    assert head.open_runs == {"run_a": entry(2, kind="agent_started", run_id="run_a").text}
    await store.append([entry(3, run_id="run_b"), entry(4, run_id="run_b")])
    head = await store.head("alice", "t1")
    assert head == ThreadHead(4, 3, {})
    assert head.open_runs == {"run_b": entry(4, run_id="run_b").text}
    prefix = store.prefix
    assert await client.hkeys(_redis.run_seqs_key(prefix, "alice", "t1")) == ("run_b",)
    assert await client.xlen(_redis.stream_key(prefix, "alice", "t1")) == 2


async def test_prune_goes_in_chunks_and_empties_unicode_users(
    open_store: OpenRedis, monkeypatch: pytest.MonkeyPatch, client: coredis.Redis[str]
) -> None:
    monkeypatch.setattr(_redis, "PRUNE_CHUNK", 3)
    monkeypatch.setattr(_redis, "PRUNE_THREADS", 2)
    store = await open_store(Retention(ttl_s=10.0))
    users = ["é:ü", "日本", "a"]
    await store.append(
        [entry(n, user=u, thread=t, at=100.0 + n) for u in users for t in "xy" for n in (1, 2, 3)]
    )
    await store.append([entry(4, user="a", thread="x", at=200.0)])
    assert await store.prune(now=150.0) == 3 * 2 * 3
    for user in ["é:ü", "日本"]:
        assert await store.threads(user, 10) == []
        assert await client.exists([_redis.threads_key(store.prefix, user)]) == 0
    assert [s.thread_id for s in await store.threads("a", 10)] == ["x"]
    assert await store.head("日本", "y") == ThreadHead(3, 4, {})
    assert await client.zcard(_redis.prune_index_key(store.prefix)) == 1


async def test_it_keeps_what_the_memory_backend_keeps(open_store: OpenRedis) -> None:
    """A random history of appends and prunes reads back the same from both.

    As the server writes them: a run gets no entry after its end, a client id is used once.
    """
    rng = random.Random(7)
    retention = Retention(max_events=5, ttl_s=30.0)
    redis_store, memory = await open_store(retention), MemoryBackend(retention)
    stores: list[Backend] = [redis_store, memory]
    last = dict.fromkeys(((u, t) for u in "ab" for t in "xyz"), 0)
    runs = dict.fromkeys(last, 0)
    kinds = ["user_message", "agent_started", "agent_thinking", "agent_completed", "run_cancelled"]
    now = 0.0
    for _ in range(40):
        batch = []
        for _ in range(rng.randint(1, 8)):
            now += rng.random() * 3
            key = rng.choice(list(last))
            last[key] += 1
            kind = rng.choice(kinds)
            run = rng.choice([f"r{runs[key]}", None])
            if run is not None and kind in ("agent_completed", "run_cancelled"):
                runs[key] += 1
            client_id = rng.choice([f"c{last[key]}", None])
            batch.append(
                entry(
                    last[key],
                    user=key[0],
                    thread=key[1],
                    kind=kind,
                    run_id=run,
                    client_id=client_id,
                    at=now,
                )
            )
        for store in stores:
            await store.append(batch)
        if rng.random() < 0.3:
            assert await redis_store.prune(now) == await memory.prune(now)
        for user, thread in last:
            heads = [await s.head(user, thread) for s in stores]
            assert heads[0] == heads[1]
            assert heads[0].open_runs == heads[1].open_runs
            assert await redis_store.page(user, thread, None, 3) == await memory.page(
                user, thread, None, 3
            )
            assert await redis_store.after(user, thread, 2, 4) == await memory.after(
                user, thread, 2, 4
            )
        for user in "ab":
            assert await redis_store.threads(user, 2) == await memory.threads(user, 2)


# -- owning a thread -----------------------------------------------------------------------


async def test_claim_held_release(open_store: OpenRedis) -> None:
    one, two = await open_store(worker_id="one"), await open_store(worker_id="two")
    await one.heartbeat(10.0)
    await two.heartbeat(10.0)
    await one.append([entry(1, kind="user_message", client_id="c1")])
    assert await one.claim("alice", "t1") == ThreadHead(1, 1, {"c1": "run_1"})
    assert await one.claim("alice", "t1") == ThreadHead(1, 1, {"c1": "run_1"})  # again: fine
    assert await two.claim("alice", "t1") == "one"
    await two.release("alice", "t1")  # not two's: nothing happens
    assert await two.claim("alice", "t1") == "one"
    await one.release("alice", "t1")
    assert await two.claim("alice", "t1") == ThreadHead(1, 1, {"c1": "run_1"})
    assert await one.claim("alice", "t1") == "two"
    assert await one.claim("alice", "other") == ThreadHead(0, 1, {})


async def test_an_owner_without_a_heartbeat_holds_nothing(open_store: OpenRedis) -> None:
    one, two = await open_store(worker_id="one"), await open_store(worker_id="two")
    await one.heartbeat(0.05)
    assert isinstance(await one.claim("alice", "t1"), ThreadHead)
    assert await two.claim("alice", "t1") == "one"
    with trio.fail_after(WAIT_S):
        # Polling Redis: nothing here could set an event when the key expires.
        while await two.claim("alice", "t1") == "one":  # noqa: ASYNC110
            await trio.sleep(0.02)
    with pytest.raises(ValueError, match="ttl_s must be > 0"):
        await one.heartbeat(0.0)


async def test_append_is_fenced_by_a_live_owner(open_store: OpenRedis) -> None:
    one, two = await open_store(worker_id="one"), await open_store(worker_id="two")
    await one.heartbeat(10.0)
    assert isinstance(await one.claim("alice", "t1"), ThreadHead)
    with pytest.raises(NotOwner) as caught:
        await two.append([entry(1, thread="free"), entry(1)])
    assert (caught.value.thread_id, caught.value.owner) == ("t1", "one")
    assert await two.head("alice", "free") == ThreadHead(0, 1, {})  # nothing of the batch
    await one.append([entry(1)])
    await two.append([entry(1, thread="free")])  # nobody's thread: anyone writes
    await one.aclose()  # a worker that stops beating...
    await two.client.delete([_redis.worker_key(two.prefix, "one")])  # ...its heartbeat expires
    await two.append([entry(2)])


# -- blocking reads ----------------------------------------------------------------------------


async def test_read_after_wakes_on_an_append_by_another(open_store: OpenRedis) -> None:
    writer, reader = await open_store(), await open_store()
    await writer.append([entry(1), entry(1, thread="t2")])
    cursors = {("alice", "t1"): 1, ("alice", "t2"): 0, ("bob", "t1"): 0}
    got = await reader.read_after(cursors, block_ms=1000, count=10)
    assert got == [entry(1, thread="t2")]  # at once: t2 had one above its cursor
    result: list[Entry] = []

    async def read() -> None:
        result.extend(await reader.read_after({("alice", "t1"): 1}, block_ms=3000, count=10))

    with trio.fail_after(2.0):  # well inside the 3 s block: woken by the append
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(0.05)
            # The blocking read has its own connection: the reader's other calls go on.
            with trio.fail_after(0.5):
                assert (await reader.head("alice", "t1")).last_seq == 1
            await writer.append([entry(2), entry(3)])
    assert result == [entry(2), entry(3)]


async def test_read_after_times_out_empty(open_store: OpenRedis) -> None:
    store = await open_store()
    with trio.fail_after(WAIT_S):
        started = trio.current_time()
        assert await store.read_after({("alice", "t1"): 0}, block_ms=100, count=5) == []
        assert trio.current_time() - started >= 0.09
        assert await store.read_after({("alice", "t1"): 0}, block_ms=0, count=5) == []
        assert await store.read_after({}, block_ms=100, count=5) == []


async def test_a_cancelled_read_after_leaves_the_backend_usable(open_store: OpenRedis) -> None:
    store = await open_store()
    with trio.move_on_after(0.05):
        await store.read_after({("alice", "t1"): 0}, block_ms=5000, count=5)
    await store.append([entry(1)])
    with trio.fail_after(WAIT_S):
        assert await store.read_after({("alice", "t1"): 0}, block_ms=100, count=5) == [entry(1)]


# -- clients -------------------------------------------------------------------------------------


async def test_a_borrowed_client_stays_open(client: coredis.Redis[str], redis_prefix: str) -> None:
    store = await open_redis(client, Retention(), prefix=redis_prefix)
    await store.append([entry(1)])
    await store.aclose()
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.read_after({("alice", "t1"): 0}, block_ms=10, count=1)
    with pytest.raises(trio.ClosedResourceError):
        await store.claim("alice", "t1")
    with pytest.raises(trio.ClosedResourceError):
        _ = store.client
    assert await client.xlen(_redis.stream_key(redis_prefix, "alice", "t1")) == 1


async def test_a_client_must_decode(redis: RedisServer) -> None:
    async with coredis.Redis.from_url(redis.url) as raw:
        with pytest.raises(ValueError, match="decode_responses"):
            # A bytes client, which the signature refuses too.
            RedisBackend(raw, Retention(), epoch="e")  # type: ignore[arg-type]


async def test_its_own_client_closes_from_another_task(
    redis: RedisServer, redis_prefix: str
) -> None:
    store = await open_redis(redis.url, Retention(), prefix=redis_prefix)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.append, [entry(1)])
    with trio.CancelScope() as scope:  # closed whole even when cancelled, as ThreadLogs does
        scope.cancel()
        await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.head("alice", "t1")


async def test_thread_logs_run_on_it(redis: RedisServer) -> None:
    """As the server uses it: opened by spec, written by the writer task, closed shielded."""
    logs = await open_thread_logs(redis.url, Retention())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(logs.run)
            ticket = logs.push(entry(1, thread=f"logs-{logs.epoch}"))
            with trio.fail_after(WAIT_S):
                await logs.wait_written(ticket)
            nursery.cancel_scope.cancel()
    finally:
        await logs.aclose()
    store = await open_redis(redis.url, Retention())
    try:
        assert store.epoch == logs.epoch
        assert (await store.head("alice", f"logs-{logs.epoch}")).last_seq == 1
    finally:
        await store.aclose()
