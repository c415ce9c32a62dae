"""ThreadLogs: numbering, group commit, write-before-send, pinning, live delivery."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from app.threads import (
    Entry,
    MemoryBackend,
    Retention,
    ThreadLogs,
    open_thread_logs,
)
from app.threads._logs import PRUNE_EVERY_S

NOW = 1_800_000_000.0


class GatedBackend(MemoryBackend):
    """The memory backend whose commits wait for ``gate``, counting batches."""

    def __init__(self) -> None:
        super().__init__(Retention())
        self.gate = trio.Event()
        self.batches: list[int] = []
        self.fail = False

    async def append(self, entries: Sequence[Entry]) -> None:
        await self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append(len(entries))
        await super().append(entries)


@attrs.define
class Recorder:
    attached: bool = True
    frames: list[tuple[str, bytes, int]] = attrs.field(factory=list)

    def deliver(self, thread_id: str, frame: bytes, ticket: int) -> None:
        self.frames.append((thread_id, frame, ticket))


def frame_of(seq: int) -> bytes:
    return f'{{"type":"x","thread_seq":{seq}}}'.encode()


async def test_events_are_numbered_and_sendable_only_once_committed() -> None:
    backend = GatedBackend()
    logs = ThreadLogs(backend, wall_clock=lambda: NOW)
    alice = logs.for_user("alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.run)
        thread = alice.create("thr_1")
        frames = [thread.append("x", "run_1", frame_of) for _ in range(3)]
        assert [frame for frame, _ in frames] == [frame_of(n) for n in (1, 2, 3)]
        tickets = [ticket for _, ticket in frames]
        assert not any(alice.sendable(t) for t in tickets)
        backend.gate.set()
        with trio.fail_after(1):
            await alice.wait_sendable(tickets[-1])
        assert all(alice.sendable(t) for t in tickets)
        assert backend.batches == [3]  # one commit for what was appended meanwhile
        entries = await alice.after("thr_1", 0, 10)
        nursery.cancel_scope.cancel()
    assert [(e.thread_seq, e.run_id, e.at) for e in entries] == [
        (1, "run_1", NOW),
        (2, "run_1", NOW),
        (3, "run_1", NOW),
    ]


async def test_reads_see_every_append_before_them() -> None:
    backend = GatedBackend()
    logs = ThreadLogs(backend)
    alice = logs.for_user("alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.run)
        alice.create("thr_1").append("x", None, frame_of)
        with trio.fail_after(1):
            async with trio.open_nursery() as inner:
                inner.start_soon(_open_gate_later, backend)
                page, more = await alice.page("thr_1", None, 10)
        assert [e.thread_seq for e in page] == [1]
        assert not more
        nursery.cancel_scope.cancel()


async def _open_gate_later(backend: GatedBackend) -> None:
    await trio.sleep(0.01)
    backend.gate.set()


async def test_a_thread_reopened_with_entries_pending_continues_its_numbering() -> None:
    backend = GatedBackend()
    logs = ThreadLogs(backend)
    alice = logs.for_user("alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.run)
        thread = alice.create("thr_1")
        thread.append("x", None, frame_of)
        alice.release(thread)
        assert logs.open_threads == 0
        nursery.start_soon(_open_gate_later, backend)
        with trio.fail_after(1):
            again = await alice.open("thr_1")
        assert (again.last_seq, again.first_seq) == (1, 1)
        frame, _ = again.append("x", None, frame_of)
        assert frame == frame_of(2)
        nursery.cancel_scope.cancel()


async def test_pins_are_counted_and_keyed_by_user() -> None:
    logs = ThreadLogs.in_memory()
    alice, bob = logs.for_user("alice"), logs.for_user("bob")
    one = await alice.open("thr_1")
    two = await alice.open("thr_1")
    other = await bob.open("thr_1")
    assert one is two
    assert other is not one
    assert not other.exists
    alice.release(one)
    assert logs.open_threads == 2
    alice.release(two)
    bob.release(other)
    assert logs.open_threads == 0


async def test_the_memory_logs_send_at_once() -> None:
    logs = ThreadLogs.in_memory()
    alice = logs.for_user("alice")
    _, ticket = alice.create("thr_1").append("x", None, frame_of)
    assert alice.sendable(ticket)
    with trio.fail_after(1):
        await alice.wait_sendable(ticket)
        assert [e.thread_seq for e in await alice.after("thr_1", 0, 5)] == [1]
        [summary] = await alice.threads(5)
    assert (summary.thread_id, summary.last_seq) == ("thr_1", 1)
    assert await logs.for_user("bob").threads(5) == []


async def test_first_opens_on_the_memory_store_do_not_wait_for_each_other() -> None:
    # Under one lock with a checkpoint inside, each open waited for the one before: a
    # hundred took two hundred scheduler rounds, and under load 1,000 users' first
    # messages waited 30 s and more for their threads.
    logs = ThreadLogs.in_memory()
    rounds = 0
    opened = trio.Event()

    async def ticker() -> None:
        nonlocal rounds
        while not opened.is_set():
            rounds += 1
            await trio.lowlevel.checkpoint()

    async def first_open(user: str) -> None:
        threads = logs.for_user(user)
        threads.release(await threads.open("thr_1"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async with trio.open_nursery() as opens:
                for i in range(100):
                    opens.start_soon(first_open, f"user{i}")
            opened.set()
    assert rounds <= 5


async def test_followers_but_the_origin_get_each_event() -> None:
    logs = ThreadLogs.in_memory()
    thread = logs.for_user("alice").create("thr_1")
    origin, other, gone = Recorder(), Recorder(), Recorder(attached=False)
    for follower in (origin, other, gone, other):
        thread.follow(follower)
    frame, ticket = thread.append("x", None, frame_of, origin=origin)
    assert other.frames == [("thr_1", frame, ticket)]
    assert origin.frames == []
    assert thread.followed_by_another(origin)
    thread.unfollow(other)
    thread.unfollow(other)
    assert not thread.followed_by_another(origin)  # ``gone`` is not attached


async def test_a_frame_encoded_already_is_appended_as_by_a_builder() -> None:
    logs = ThreadLogs.in_memory()
    alice = logs.for_user("alice")
    thread = alice.create("thr_1")
    origin, other = Recorder(), Recorder()
    thread.follow(origin)
    thread.follow(other)
    frame, first = thread.append("x", "run_1", frame_of, origin=origin)
    second = thread.append_frame("y", "run_1", 2, frame_of(2), origin)
    assert second > first
    assert thread.last_seq == 2
    assert other.frames == [("thr_1", frame, first), ("thr_1", frame_of(2), second)]
    assert origin.frames == []
    entries = await alice.after("thr_1", 0, 5)
    assert [(e.thread_seq, e.kind, e.run_id, e.text) for e in entries] == [
        (1, "x", "run_1", frame_of(1).decode()),
        (2, "y", "run_1", frame_of(2).decode()),
    ]


@pytest.mark.parametrize("bad", [ValueError("not JSON"), "\ud800"])
def test_an_event_that_cannot_be_encoded_uses_nothing(bad: object) -> None:
    logs = ThreadLogs.in_memory()
    thread = logs.for_user("alice").create("thr_1")

    def build(seq: int) -> bytes:
        if isinstance(bad, Exception):
            raise bad
        return str(bad).encode()

    with pytest.raises(ValueError, match=r"not JSON|surrogate"):  # UnicodeEncodeError is one
        thread.append("x", None, build)
    assert thread.last_seq == 0
    assert thread.append("x", None, frame_of)[0] == frame_of(1)


async def test_a_failing_backend_stops_the_writer_with_its_error() -> None:
    backend = GatedBackend()
    backend.fail = True
    backend.gate.set()
    logs = ThreadLogs(backend)
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="disk full"), flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(logs.run)
            logs.for_user("alice").create("thr_1").append("x", None, frame_of)


async def test_flush_commits_what_is_pending() -> None:
    backend = GatedBackend()
    backend.gate.set()
    logs = ThreadLogs(backend)
    _, ticket = logs.for_user("alice").create("thr_1").append("x", None, frame_of)
    await logs.flush()
    assert logs.sendable(ticket)
    await logs.aclose()
    await logs.aclose()


async def test_expired_events_are_pruned(autojump_clock: trio.testing.MockClock) -> None:
    clock = [NOW]
    logs = ThreadLogs.in_memory(Retention(ttl_s=30), wall_clock=lambda: clock[0])
    alice = logs.for_user("alice")
    alice.create("thr_1").append("x", None, frame_of)
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.run)
        clock[0] += 31
        await trio.sleep(PRUNE_EVERY_S + 1)
        assert await alice.after("thr_1", 0, 5) == []
        nursery.cancel_scope.cancel()


async def test_open_thread_logs_from_a_spec(tmp_path: Path) -> None:
    memory = await open_thread_logs("memory", Retention())
    _, ticket = memory.for_user("a").create("t").append("x", None, frame_of)
    assert memory.sendable(ticket)
    # What a session reads once, so that it checks no ticket per write on a memory store.
    assert not memory.durable
    assert not memory.for_user("a").durable
    durable = await open_thread_logs(f"sqlite:{tmp_path / 't.db'}", Retention())
    try:
        assert durable.durable
        assert durable.for_user("a").durable
        _, ticket = durable.for_user("a").create("t").append("x", None, frame_of)
        assert not durable.sendable(ticket)
        await durable.flush()
        assert durable.sendable(ticket)
        assert durable.epoch
    finally:
        await durable.aclose()


async def test_a_run_a_crash_left_without_an_end_is_ended_on_open(tmp_path: Path) -> None:
    path = f"sqlite:{tmp_path / 't.db'}"
    crashed = await open_thread_logs(path, Retention())
    thread = crashed.for_user("alice").create("thr_1")
    thread.append("user_message", "run_1", lambda seq: b'{"type":"message_accepted"}')
    started = b'{"type":"agent_started","run_id":"run_1","seq":1,"thread_seq":%d}'
    thread.append("agent_started", "run_1", lambda seq: started % seq)
    await crashed.flush()
    await crashed.aclose()  # no end was appended: as after a SIGKILL
    restarted = await open_thread_logs(path, Retention())
    try:
        alice = restarted.for_user("alice")
        again = await alice.open("thr_1")
        assert again.last_seq == 3
        await restarted.flush()
        [end] = await alice.after("thr_1", 2, 5)
        assert (await alice.open("thr_1")).last_seq == 3  # open again: nothing more
    finally:
        await restarted.aclose()
    assert json.loads(end.text) == {
        "type": "run_cancelled",
        "reason": "interrupted",
        "run_id": "run_1",
        "thread_id": "thr_1",
        "seq": 2,
        "thread_seq": 3,
    }


async def test_each_backend_call_is_timed(tmp_path: Path) -> None:
    logs = await open_thread_logs(f"sqlite:{tmp_path / 't.db'}", Retention())
    seen: list[str] = []
    logs.observe = lambda op, seconds: seen.append(op) if seconds >= 0 else None
    try:
        alice = logs.for_user("alice")
        alice.release(await alice.open("thr_1"))
        alice.create("thr_2").append("x", None, frame_of)
        await logs.flush()
        await alice.page("thr_2", None, 5)
        await alice.after("thr_2", 0, 5)
        await alice.threads(5)
    finally:
        await logs.aclose()
    assert seen == ["head", "append", "page", "after", "threads"]
