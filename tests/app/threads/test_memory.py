"""What only the memory backend does: a new epoch per store, nothing kept on close."""

from __future__ import annotations

import pytest
import trio

from app.threads import Entry, MemoryBackend, Retention, ThreadHead
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
