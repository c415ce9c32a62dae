"""End to end: two servers sharing one Redis store, as two workers or two machines do.

A client cut while its run executes on one server resumes on the other: the replay, the
rest of the run live (read from the store as it is written), its cancel, and the next
message (once the first server has given the thread up). Real ``redis-server`` (the
``redis`` fixture); both servers run in this test's process, each with its own lease.
(Separate processes, SIGKILL and nginx: tests/chaos and tests/deploy.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

from app.testing import RedisServer

if TYPE_CHECKING:
    from tests.app.conftest import E2E, Chat

pytestmark = pytest.mark.parametrize("transport", ["lean"])
TERMINAL = frozenset({"agent_completed", "agent_error", "run_cancelled"})


def _store(redis: RedisServer, prefix: str) -> str:
    return f"{redis.url}?prefix={prefix}"


async def _resume(chat: Chat, thread_id: str, after: int) -> tuple[dict[str, Any], list[Any]]:
    """Send ``resume``; the ``resumed`` frame and the replayed frames before it."""
    await chat.send({"type": "resume", "thread_id": thread_id, "after": after})
    frames = []
    with trio.fail_after(5):
        while (frame := await chat.recv())["type"] != "resumed":
            frames.append(frame)
    return frame, frames


async def test_a_run_cut_on_one_server_is_resumed_on_the_other(
    e2e: E2E, redis: RedisServer, redis_prefix: str
) -> None:
    store = _store(redis, redis_prefix)
    async with (
        e2e.server(store=store, agent_delay_ms=150, resume_grace_s=10) as one,
        e2e.server(store=store, agent_delay_ms=150, resume_grace_s=10) as other,
    ):
        token = e2e.token("alice")
        started = await one.started_then_dropped(token, "one two three")
        thread = started["thread_id"]
        async with one.chat(token) as chat:
            epoch = chat.ready["epoch"]
        async with other.chat(token) as chat:
            assert chat.ready["epoch"] == epoch  # one store, one epoch
            resumed, replayed = await _resume(chat, thread, 0)
            assert resumed["recovered"] is True
            assert started["run_id"] in resumed["live_runs"]  # still running on the first
            live = await chat.run_until_terminal(started["run_id"])
            frames = replayed + live
            seqs = [f["thread_seq"] for f in frames]
            assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
            assert frames[-1]["type"] == "agent_completed"
            assert frames[-1]["result"] == {"text": "one two three", "words": 3}
            # The next message of the thread: the first server gives the thread up once
            # its run ended, and this one writes it from there.
            second = await chat.run_to_end("four five", thread_id=thread)
            # Its message_accepted (seq + 1) is not sent to its own sender.
            assert [f["thread_seq"] for f in second] == list(
                range(seqs[-1] + 2, seqs[-1] + 2 + len(second))
            )
            assert second[-1]["type"] == "agent_completed"
        # And back on the first server, the whole thread in order.
        async with one.chat(token) as chat:
            resumed, replayed = await _resume(chat, thread, 0)
            assert [f["thread_seq"] for f in replayed] == list(range(1, len(replayed) + 1))
            assert resumed["last_seq"] == seqs[-1] + 1 + len(second)


async def test_a_run_live_on_one_server_is_cancelled_from_the_other(
    e2e: E2E, redis: RedisServer, redis_prefix: str
) -> None:
    store = _store(redis, redis_prefix)
    async with (
        e2e.server(store=store, agent_delay_ms=2000, resume_grace_s=10) as one,
        e2e.server(store=store, resume_grace_s=10) as other,
    ):
        token = e2e.token("alice")
        started = await one.started_then_dropped(token, "a slow one")
        async with other.chat(token) as chat:
            resumed, _ = await _resume(chat, started["thread_id"], 2)
            assert resumed["live_runs"] == [started["run_id"]]
            await chat.send({"type": "cancel", "run_id": started["run_id"]})
            with trio.fail_after(5):
                frames = await chat.run_until_terminal(started["run_id"])
    assert (frames[-1]["type"], frames[-1]["reason"]) == ("run_cancelled", "cancelled_by_client")


async def test_a_run_followed_from_the_other_server_outlives_its_grace(
    e2e: E2E, redis: RedisServer, redis_prefix: str
) -> None:
    store = _store(redis, redis_prefix)
    async with (
        e2e.server(store=store, agent_delay_ms=500, resume_grace_s=0.3) as one,
        e2e.server(store=store, resume_grace_s=0.3) as other,
    ):
        token = e2e.token("alice")
        started = await one.started_then_dropped(token, "one two three")
        async with other.chat(token) as chat:
            await _resume(chat, started["thread_id"], 2)
            with trio.fail_after(10):
                frames = await chat.run_until_terminal(started["run_id"])
    assert frames[-1]["type"] == "agent_completed"  # not client_gone after 0.3 s


async def test_another_user_cannot_reach_the_thread_from_the_other_server(
    e2e: E2E, redis: RedisServer, redis_prefix: str
) -> None:
    store = _store(redis, redis_prefix)
    async with (
        e2e.server(store=store, agent_delay_ms=300, resume_grace_s=10) as one,
        e2e.server(store=store, resume_grace_s=10) as other,
    ):
        started = await one.started_then_dropped(e2e.token("alice"), "secret words")
        async with other.chat(e2e.token("mallory")) as chat:
            resumed, replayed = await _resume(chat, started["thread_id"], 0)
            await chat.send({"type": "cancel", "run_id": started["run_id"]})
            error = await chat.expect("error")
            await chat.send(
                {"type": "user_message", "text": "x", "thread_id": started["thread_id"]}
            )
            # Its own thread of that name: nothing of alice's is in it.
            mine = await chat.run_until_terminal((await chat.expect("agent_started"))["run_id"])
    assert (resumed["recovered"], resumed["reason"], replayed) == (False, "unknown_thread", [])
    assert error["code"] == "run_not_found"
    assert mine[-1]["type"] == "agent_completed"
    assert all("secret" not in json.dumps(frame) for frame in mine)
