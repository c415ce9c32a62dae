"""A session's threads: thread_seq, history, threads, resume, idempotency, runs that outlive
their connection. In memory (the memory transport and the memory store); the SQLite
store and a real server are in tests/app/server and tests/chaos.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from app import (
    AuthConfig,
    EchoAgent,
    MemoryClient,
    PeerClosed,
    ServerLifecycle,
    Services,
    Settings,
    TokenVerifier,
    UserContext,
    memory_transport_pair,
    run_session,
)
from app.session._session import MAX_FOLLOWED, MAX_PAGE_BYTES
from app.threads import Retention, ThreadLogs, UserThreads

SECRET = b"k" * 32
NOW = 1_800_000_000.0
TERMINAL = frozenset({"agent_completed", "agent_error", "run_cancelled"})
_ids = itertools.count()


@attrs.define
class Conn:
    client: MemoryClient
    ready: dict[str, Any]
    ended: trio.Event
    scope: trio.CancelScope

    async def send(self, **message: Any) -> None:
        await self.client.send_json(message)

    async def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        """The next frame; it must be of ``kind`` and match."""
        frame = await self.client.receive_json()
        assert frame["type"] == kind, frame
        assert match.items() <= frame.items(), frame
        return frame

    async def until(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """Frames up to and including the first of ``kind`` matching."""
        frames = []
        while True:
            frame = await self.client.receive_json()
            frames.append(frame)
            if frame["type"] == kind and match.items() <= frame.items():
                return frames

    async def turn(self, text: str = "hello there", **fields: Any) -> list[dict[str, Any]]:
        await self.send(type="user_message", text=text, **fields)
        return await self.until_terminal()

    async def until_terminal(self) -> list[dict[str, Any]]:
        frames = [await self.client.receive_json()]
        while frames[-1]["type"] not in TERMINAL:
            frames.append(await self.client.receive_json())
        return frames


@attrs.define
class Server:
    """A lifecycle (its thread logs) that connections share, as in one server process."""

    nursery: trio.Nursery
    lifecycle: ServerLifecycle
    services: Services

    async def started_then_gone(self, text: str = "x") -> tuple[dict[str, Any], Conn]:
        """A connection that starts a run, reads its agent_started, and leaves."""
        async with self.connect() as conn:
            await conn.send(type="user_message", text=text)
            started = await conn.expect("agent_started")
        return started, conn

    @asynccontextmanager
    async def connect(self, user: str = "alice") -> AsyncIterator[Conn]:
        transport, client = memory_transport_pair(client_buffer=math.inf)
        context = UserContext(user, f"conn_{next(_ids)}", NOW + 3600, "authorization")
        ended = trio.Event()
        scope = trio.CancelScope()

        async def session() -> None:
            with scope:
                try:
                    await run_session(transport, context, self.services, self.lifecycle)
                finally:
                    ended.set()

        self.nursery.start_soon(session)
        ready = await client.receive_json()
        assert ready["type"] == "connection_ready"
        conn = Conn(client, ready, ended, scope)
        try:
            yield conn
        finally:
            await client.disconnect()


@asynccontextmanager
async def server(
    *, agent: Any = None, logs: ThreadLogs | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    settings = Settings(jwt_secret=SECRET, **overrides)
    services = Services(
        settings=settings,
        verifier=TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",))),
        agent=agent or EchoAgent(delay_s=settings.agent_delay_ms / 1000),
        log=logging.getLogger("test.threads"),
        wall_clock=lambda: NOW,
    )
    lifecycle = ServerLifecycle(
        max_connections=100, threads=logs or ThreadLogs.in_memory(wall_clock=lambda: NOW)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifecycle.timer.run)
        await nursery.start(lifecycle.threads.run)
        yield Server(nursery, lifecycle, services)
        nursery.cancel_scope.cancel()


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["type"] for frame in frames]


async def test_every_event_of_a_thread_is_numbered_across_runs() -> None:
    async with server() as srv, srv.connect() as conn:
        first = await conn.turn("one two", client_id="c1")
        thread = first[0]["thread_id"]
        second = await conn.turn("three", thread_id=thread, client_id="c2")
    # thread_seq 1 and 7 are the messages themselves (message_accepted, not sent back).
    assert [f["thread_seq"] for f in first] == [2, 3, 4, 5, 6]
    assert [f["thread_seq"] for f in second] == [8, 9, 10, 11, 12]
    assert [f["seq"] for f in second] == [1, 2, 3, 4, 5]
    assert conn.ready["epoch"] == srv.lifecycle.threads.epoch


async def test_history_pages_back_through_a_thread() -> None:
    async with server() as srv, srv.connect() as conn:
        frames = await conn.turn("hello", client_id="c1")
        thread = frames[0]["thread_id"]
        await conn.turn("again", thread_id=thread)
        await conn.send(type="history", thread_id=thread, limit=4)
        newest = await conn.expect("history_page", thread_id=thread, has_more=True)
        seqs = [event["thread_seq"] for event in newest["events"]]
        assert seqs == [9, 10, 11, 12]
        await conn.send(type="history", thread_id=thread, before=9, limit=200)
        older = await conn.expect("history_page", has_more=False)
    events = older["events"]
    assert [e["thread_seq"] for e in events] == list(range(1, 9))
    assert events[0] == {
        "type": "message_accepted",
        "run_id": frames[0]["run_id"],
        "thread_id": thread,
        "thread_seq": 1,
        "text": "hello",
        "client_id": "c1",
    }
    # History gives the events exactly as they were sent.
    assert events[1:6] == frames


async def test_a_history_page_stays_under_its_size_limit() -> None:
    text = "x" * 30_000
    async with server(rate_per_s=1000, rate_burst=1000) as srv, srv.connect() as conn:
        frames = await conn.turn(text)
        thread = frames[0]["thread_id"]
        for _ in range(7):  # each turn logs the text three times: 8 x 90 KB
            await conn.turn(text, thread_id=thread)
        await conn.send(type="history", thread_id=thread, limit=200)
        page = await conn.expect("history_page", has_more=True)
    size = sum(len(str(event)) for event in page["events"])
    assert 0 < len(page["events"]) < 8 * 6
    assert size <= MAX_PAGE_BYTES * 1.2
    assert page["events"][-1]["type"] == "agent_completed"


async def test_threads_lists_the_users_own_threads_newest_first() -> None:
    clock = itertools.count(NOW)
    logs = ThreadLogs.in_memory(wall_clock=lambda: next(clock))
    async with server(logs=logs) as srv:
        async with srv.connect("alice") as alice:
            a1 = (await alice.turn())[0]["thread_id"]
            a2 = (await alice.turn())[0]["thread_id"]
        async with srv.connect("bob") as bob:
            await bob.turn()
            await bob.send(type="threads")
            bobs = await bob.expect("thread_list")
        async with srv.connect("alice") as alice:
            await alice.send(type="threads", limit=1)
            newest = await alice.expect("thread_list")
            await alice.send(type="threads")
            both = await alice.expect("thread_list")
    assert [t["thread_id"] for t in both["threads"]] == [a2, a1]
    assert newest["threads"] == both["threads"][:1]
    assert both["threads"][0]["last_seq"] == 6
    assert {t["thread_id"] for t in bobs["threads"]}.isdisjoint({a1, a2})


async def test_resume_replays_what_was_missed_then_says_resumed() -> None:
    async with server() as srv:
        async with srv.connect() as first:
            frames = await first.turn("hello", client_id="c1")
        thread = frames[0]["thread_id"]
        async with srv.connect() as second:
            await second.send(type="resume", thread_id=thread, after=3)
            replay = await second.until("resumed")
            await second.send(type="resume", thread_id=thread, after=6)
            nothing = await second.until("resumed")
    assert replay[:-1] == frames[2:]
    assert replay[-1] == {
        "type": "resumed",
        "thread_id": thread,
        "recovered": True,
        "last_seq": 6,
        "live_runs": [],
    }
    assert types(nothing) == ["resumed"]


async def test_resume_failures_say_why() -> None:
    logs = ThreadLogs.in_memory(Retention(max_events=3), wall_clock=lambda: NOW)
    async with server(logs=logs) as srv:
        async with srv.connect("alice") as alice:
            thread = (await alice.turn())[0]["thread_id"]
            cases: list[tuple[dict[str, Any], str]] = [
                ({"after": 0}, "retention"),  # only the last 3 events are kept
                ({"after": 99}, "epoch_changed"),  # more than the log ever had
                ({"after": 0, "epoch": "another"}, "epoch_changed"),
            ]
            for fields, reason in cases:
                await alice.send(type="resume", thread_id=thread, **fields)
                await alice.expect("resumed", recovered=False, reason=reason)
            await alice.send(type="resume", thread_id=thread, after=3, epoch=alice.ready["epoch"])
            replay = await alice.until("resumed")
            assert [f["thread_seq"] for f in replay[:-1]] == [4, 5, 6]
        async with srv.connect("bob") as bob:
            await bob.send(type="resume", thread_id=thread, after=0)
            foreign = await bob.client.receive_json()
            await bob.send(type="resume", thread_id="thr_never", after=0)
            missing = await bob.client.receive_json()
            await bob.send(type="history", thread_id=thread)
            page = await bob.expect("history_page")
    # Another user's thread and no thread at all: the same answer, nothing of alice's.
    assert {**foreign, "thread_id": "x"} == {**missing, "thread_id": "x"}
    assert foreign["reason"] == "unknown_thread"
    assert page == {"type": "history_page", "thread_id": thread, "events": [], "has_more": False}


async def test_a_repeated_client_id_starts_no_second_run() -> None:
    async with server() as srv:
        async with srv.connect() as first:
            frames = await first.turn("hi", client_id="c1")
            thread, run_id = frames[0]["thread_id"], frames[0]["run_id"]
        async with srv.connect() as second:  # a retried send after a reconnect
            await second.send(type="user_message", text="hi", client_id="c1", thread_id=thread)
            dup = await second.expect("duplicate_message")
            other = await second.turn("hi", client_id="c1")  # another thread: a new run
    assert dup == {
        "type": "duplicate_message",
        "thread_id": thread,
        "client_id": "c1",
        "run_id": run_id,
    }
    assert other[0]["run_id"] != run_id


async def test_a_run_outlives_its_connection_and_resumes_live() -> None:
    async with server(agent_delay_ms=1000, resume_grace_s=30) as srv:
        async with srv.connect() as first:
            await first.send(type="user_message", text="a b", client_id="c1")
            started = await first.expect("agent_started")
        thread = started["thread_id"]
        with trio.fail_after(5):
            async with srv.connect() as second:
                await second.send(type="resume", thread_id=thread, after=started["thread_seq"])
                rest = await second.until_terminal()
                await second.send(type="history", thread_id=thread)
                page = await second.expect("history_page")
    [resumed] = [f for f in rest if f["type"] == "resumed"]
    assert resumed["live_runs"] == [started["run_id"]]
    assert types(rest)[-1] == "agent_completed"
    seqs = [f["thread_seq"] for f in rest if "thread_seq" in f]
    assert seqs == list(range(started["thread_seq"] + 1, 7))
    assert [e["thread_seq"] for e in page["events"]] == list(range(1, 7))


async def test_an_event_appended_while_a_resume_waits_for_the_store_comes_once(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # With a shared store, mark_followed waits for it; the run of another connection of
    # the user goes on meanwhile. Its event then is live, not replayed too.
    async def slow_mark_followed(self: UserThreads, thread: object) -> None:
        await trio.sleep(1.5)  # the run emits one event meanwhile

    monkeypatch.setattr(UserThreads, "mark_followed", slow_mark_followed)
    async with server(agent_delay_ms=1000, resume_grace_s=30) as srv:
        async with srv.connect() as first:
            await first.send(type="user_message", text="a b", client_id="c1")
            started = await first.expect("agent_started")
        async with srv.connect() as second:
            await second.send(
                type="resume", thread_id=started["thread_id"], after=started["thread_seq"]
            )
            rest = await second.until_terminal()
    seqs = [f["thread_seq"] for f in rest if "thread_seq" in f]
    assert seqs == list(range(started["thread_seq"] + 1, 7))
    [resumed] = [f for f in rest if f["type"] == "resumed"]
    assert resumed["last_seq"] == started["thread_seq"]  # where the log ended at the resume


async def test_a_run_nobody_resumes_is_cancelled_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with server(agent_delay_ms=600_000, resume_grace_s=30) as srv:
        started, first = await srv.started_then_gone()
        gone = trio.current_time()
        await first.ended.wait()
        ended = trio.current_time()
        async with srv.connect() as later:
            await later.send(type="history", thread_id=started["thread_id"])
            page = await later.expect("history_page")
    assert 30 <= ended - gone <= 31
    last = page["events"][-1]
    assert (last["type"], last["reason"]) == ("run_cancelled", "client_gone")


async def test_a_follower_keeps_the_run_alive_past_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with server(agent_delay_ms=60_000, resume_grace_s=10) as srv:
        started, _ = await srv.started_then_gone()
        async with srv.connect() as second:
            await second.send(type="resume", thread_id=started["thread_id"], after=0)
            await second.until("resumed")
            rest = await second.until_terminal()  # four agent steps of 60 s, past the grace
        assert types(rest)[-1] == "agent_completed"


async def test_a_resuming_connection_can_cancel_the_run() -> None:
    async with server(agent_delay_ms=60_000) as srv:
        started, _ = await srv.started_then_gone()
        async with srv.connect() as second:
            await second.send(type="resume", thread_id=started["thread_id"], after=0)
            await second.until("resumed")
            await second.send(type="cancel", run_id=started["run_id"])
            rest = await second.until_terminal()
            await second.send(type="cancel", run_id=started["run_id"])
            await second.expect("error", code="run_not_found")
        async with srv.connect("bob") as bob:  # another user's run: unknown
            await bob.send(type="cancel", run_id=started["run_id"])
            await bob.expect("error", code="run_not_found", ref=started["run_id"])
    assert (rest[-1]["type"], rest[-1]["reason"]) == ("run_cancelled", "cancelled_by_client")


async def test_other_connections_following_a_thread_see_its_new_messages() -> None:
    async with server() as srv, srv.connect() as one, srv.connect() as two:
        frames = await one.turn("first")
        thread = frames[0]["thread_id"]
        await two.send(type="resume", thread_id=thread, after=6)
        await two.until("resumed")
        mine = await one.turn("second", thread_id=thread, client_id="c2")
        seen = [await two.client.receive_json() for _ in range(6)]
    assert seen[0]["type"] == "message_accepted"
    assert (seen[0]["text"], seen[0]["thread_seq"]) == ("second", 7)
    assert seen[1:] == mine


async def test_without_a_grace_a_disconnect_cancels_at_once() -> None:
    async with server(agent_delay_ms=60_000, resume_grace_s=0) as srv:
        started, first = await srv.started_then_gone()
        with trio.fail_after(5):
            await first.ended.wait()
        async with srv.connect() as later:
            await later.send(type="history", thread_id=started["thread_id"])
            page = await later.expect("history_page")
    # The run could not send its end; its log still has exactly one.
    assert [e["type"] for e in page["events"]] == [
        "message_accepted",
        "agent_started",
        "run_cancelled",
    ]
    assert page["events"][-1]["reason"] == "client_gone"


async def test_a_connection_lets_go_of_its_oldest_threads() -> None:
    async with server(rate_per_s=1000, rate_burst=1000) as srv, srv.connect() as conn:
        for _ in range(MAX_FOLLOWED + 3):
            await conn.turn()
        assert srv.lifecycle.threads.open_threads == MAX_FOLLOWED
    # The connection gone, nothing of it stays pinned.
    await trio.testing.wait_all_tasks_blocked()
    assert srv.lifecycle.threads.open_threads == 0


async def test_a_closed_connection_drops_its_followers() -> None:
    async with server() as srv:
        async with srv.connect() as conn:
            await conn.turn()
        with trio.fail_after(5):
            await conn.ended.wait()
        with pytest.raises(PeerClosed):
            await conn.client.receive()
        assert srv.lifecycle.threads.open_threads == 0


@attrs.frozen
class Remembering:
    """An agent that asks for the thread's earlier turns and answers with them."""

    name: str = "remembering"
    uses_history: bool = True

    async def run(self, run: Any, emit: Any) -> Any:
        return {"text": f"#{len(run.history)}", "history": [list(turn) for turn in run.history]}


@attrs.frozen
class RememberingSlowly:
    """Reads the thread's earlier turns; takes a minute when there are some."""

    name: str = "remembering_slowly"
    uses_history: bool = True

    async def run(self, run: Any, emit: Any) -> Any:
        if run.history:
            await run.sleep(60)
        return {"text": "done"}


async def test_a_run_stopped_while_it_reads_its_history_is_cancelled_as_its_agent_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with server(agent=RememberingSlowly()) as srv, srv.connect() as conn:
        thread = (await conn.turn("hi"))[0]["thread_id"]
        backend = srv.lifecycle.threads._backend
        reading, release = trio.Event(), trio.Event()
        real_page = backend.page

        async def page(*args: Any) -> Any:
            reading.set()
            await release.wait()
            return await real_page(*args)

        monkeypatch.setattr(backend, "page", page)
        await conn.send(type="user_message", text="again", thread_id=thread)
        with trio.fail_after(5):
            await reading.wait()
            srv.lifecycle.begin_drain(grace_s=0)  # stops the run before its agent starts
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            frames = await conn.until_terminal()  # not a minute later: cancelled at once
    assert types(frames) == ["agent_started", "run_cancelled"]
    assert frames[-1]["reason"] == "server_shutdown"


async def test_an_agent_that_uses_history_gets_the_threads_earlier_turns() -> None:
    async with server(agent=Remembering()) as srv, srv.connect() as conn:
        first = await conn.turn("hi")
        thread = first[0]["thread_id"]
        await conn.turn("and again", thread_id=thread)
        third = await conn.turn("third", thread_id=thread)
    assert first[-1]["result"]["history"] == []
    assert third[-1]["result"]["history"] == [
        ["user", "hi"],
        ["assistant", "#0"],
        ["user", "and again"],
        ["assistant", "#2"],
    ]
