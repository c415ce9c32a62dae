"""The checks both backends share."""

from __future__ import annotations

import pytest

from app.threads import Entry
from app.threads._common import check_limit, last_entries


def entry(thread: str, seq: int) -> Entry:
    return Entry("alice", thread, seq, "agent_thinking", None, None, "{}", 1.0)


def test_check_limit() -> None:
    check_limit(1)
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        check_limit(0)


def test_last_entries_are_the_newest_of_each_thread() -> None:
    stored = {("alice", "a"): 3}
    batch = [entry("a", 4), entry("b", 1), entry("a", 7)]
    assert last_entries(batch, lambda key: stored.get(key, 0)) == {
        ("alice", "a"): entry("a", 7),
        ("alice", "b"): entry("b", 1),
    }
    with pytest.raises(ValueError, match="thread_seq 3 of thread 'a' is not above its last seq 3"):
        last_entries([entry("a", 3)], lambda key: stored.get(key, 0))
    assert last_entries([], lambda key: 0) == {}
