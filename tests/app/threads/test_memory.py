"""What only the memory backend does: a new epoch per store, nothing kept on close, a head
kept up to date instead of read off every entry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from app.threads import Entry, MemoryBackend, Retention, ThreadHead
from app.threads._backend import TERMINAL_KINDS
from app.threads._memory import ENTRY_OVERHEAD


def entry(seq: int, at: float) -> Entry:
    return Entry("alice", "t1", seq, "agent_thinking", "run_1", None, "{}", at)


async def test_every_store_has_its_own_epoch() -> None:
    epochs = {MemoryBackend(Retention()).epoch for _ in range(20)}
    assert len(epochs) == 20


async def test_the_clock_and_retention_are_kept() -> None:
    store = MemoryBackend(Retention(max_events=5), clock=lambda: 42.0)
    assert store.clock() == 42.0
    assert store.retention == Retention(max_events=5)


async def test_prune_drops_old_entries_wherever_they_are() -> None:
    # Entries carry the wall clock of their append, which may step back.
    store = MemoryBackend(Retention(ttl_s=10.0))
    await store.append([entry(1, at=100.0), entry(2, at=50.0), entry(3, at=120.0)])
    assert await store.prune(now=115.0) == 2
    assert await store.head("alice", "t1") == ThreadHead(3, 3, {})


async def test_a_closed_store_forgets_its_threads() -> None:
    store = MemoryBackend(Retention())
    await store.append([entry(1, at=1.0)])
    await store.aclose()
    reopened_view = MemoryBackend(Retention())
    assert await reopened_view.head("alice", "t1") == ThreadHead(0, 1, {})


async def test_the_least_recently_updated_threads_go_first_past_max_bytes() -> None:
    store = MemoryBackend(Retention(), max_bytes=20 * (ENTRY_OVERHEAD + 10))
    for seq in range(1, 11):
        for thread in ("old", "new"):
            store.append_now([Entry("u", thread, seq, "x", None, None, "t" * 10, 1.0)])
    assert store.bytes_held <= store.max_bytes
    store.append_now([Entry("u", "new", 11, "x", None, None, "t" * 10, 1.0)])
    old, new = await store.head("u", "old"), await store.head("u", "new")
    assert (old.last_seq, old.first_seq) == (10, 11)  # its events are gone, not its numbering
    assert (new.last_seq, new.first_seq) == (11, 1)
    with pytest.raises(ValueError, match="not above"):
        store.append_now([Entry("u", "new", 11, "x", None, None, "t", 1.0)])


async def test_append_one_refuses_a_closed_store() -> None:
    store = MemoryBackend(Retention())
    store.append_one(entry(1, 1.0))
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        store.append_one(entry(2, 2.0))


def scanned_head(entries: list[Entry], last_seq: int) -> ThreadHead:
    """The head as read off every retained entry: what the store's kept head must equal."""
    last: dict[str, str] = {}
    ended: set[str] = set()
    client_ids: dict[str, str] = {}
    for e in entries:
        if e.run_id is None:
            continue
        last[e.run_id] = e.text
        if e.kind in TERMINAL_KINDS:
            ended.add(e.run_id)
        if e.kind == "user_message" and e.client_id is not None:
            client_ids[e.client_id] = e.run_id
    return ThreadHead(
        last_seq=last_seq,
        first_seq=entries[0].thread_seq if entries else last_seq + 1,
        client_ids=client_ids,
        open_runs={r: text for r, text in last.items() if r not in ended},
    )


# One step of a thread's life: a run's message (with or without a client id, perhaps one
# used before), one of its events, its end, or an entry without a run.
STEPS = st.lists(
    st.tuples(st.sampled_from(["message", "event", "end", "other"]), st.integers(0, 3)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=STEPS,
    max_events=st.integers(0, 12),
    max_entries=st.integers(0, 30),
    ttl_cut=st.integers(0, 40),
)
def test_the_kept_head_is_what_the_retained_entries_say(
    steps: list[tuple[str, int]], max_events: int, max_entries: int, ttl_cut: int
) -> None:
    size = ENTRY_OVERHEAD + 1
    store = MemoryBackend(Retention(max_events=max_events, ttl_s=1.0), max_bytes=max_entries * size)
    seqs = {"t1": 0, "t2": 0}
    live: dict[str, str] = {}  # thread -> its run without an end yet
    runs = 0
    for i, (step, n) in enumerate(steps):
        thread = ("t1", "t2")[n % 2]
        seqs[thread] += 1
        run_id: str | None = live.get(thread)
        kind, client_id = "agent_thinking", None
        if step == "message" or (step in ("event", "end") and run_id is None):
            runs += 1
            run_id = live[thread] = f"run_{runs}"
            kind, client_id = "user_message", (None if n == 0 else f"c{n}")
        elif step == "end":
            kind = ("agent_completed", "agent_error", "run_cancelled")[n % 3]
            del live[thread]
        elif step == "other":
            kind, run_id = "note", None
        store.append_now([Entry("u", thread, seqs[thread], kind, run_id, client_id, "x", i)])
        assert_heads_as_scanned(store)
    trio.run(store.prune, float(ttl_cut))  # ttl 1 s: drops the entries with at < ttl_cut - 1
    assert_heads_as_scanned(store)


def assert_heads_as_scanned(store: MemoryBackend) -> None:
    for key, thread in store._users.get("u", {}).items():
        kept, scanned = store.head_now("u", key), scanned_head(thread.entries, thread.last_seq)
        assert kept == scanned
        assert kept.open_runs == scanned.open_runs  # not in a head's equality


class Unscannable(list[Entry]):
    def __iter__(self) -> Iterator[Entry]:
        raise AssertionError("the head scanned the thread's entries")


def test_opening_a_long_thread_does_not_scan_its_entries() -> None:
    store = MemoryBackend(Retention())
    for seq in range(1, 10_001, 2):
        run_id = f"run_{seq}"
        store.append_now([Entry("u", "t", seq, "user_message", run_id, f"c{seq}", "{}", 1.0)])
        store.append_now([Entry("u", "t", seq + 1, "agent_completed", run_id, None, "{}", 1.0)])
    store.append_now([Entry("u", "t", 10_001, "user_message", "run_last", None, "{}", 1.0)])
    thread = store._users["u"]["t"]
    thread.entries = Unscannable(thread.entries)
    head = store.head_now("u", "t")
    assert (head.last_seq, head.first_seq, len(head.client_ids)) == (10_001, 1, 5_000)
    assert head.open_runs == {"run_last": "{}"}
