"""End to end: threads through ``serve()`` on both transports, and the SQLite store across a
restart. (SIGKILL and many users: tests/chaos.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.app.conftest import E2E

pytestmark = pytest.mark.parametrize("transport", ["lean", "asgi"])
TERMINAL = frozenset({"agent_completed", "agent_error", "run_cancelled"})


async def test_a_refresh_mid_run_gets_the_rest_of_the_answer(e2e: E2E, transport: str) -> None:
    async with e2e.server(agent_delay_ms=300, resume_grace_s=10) as live:
        token = e2e.token("alice")
        started = await live.started_then_dropped(token, "one two three")
        async with live.chat(token) as chat:
            await chat.send({"type": "resume", "thread_id": started["thread_id"], "after": 2})
            frames = [await chat.recv()]
            while frames[-1]["type"] != "resumed":
                frames.append(await chat.recv())
            if not any(f["type"] in TERMINAL for f in frames):
                frames += await chat.run_until_terminal(started["run_id"])
    frames = [f for f in frames if f["type"] != "resumed"]
    seqs = [frame["thread_seq"] for frame in frames if "thread_seq" in frame]
    assert seqs == list(range(3, seqs[-1] + 1))
    if transport == "lean":
        assert frames[-1]["result"] == {"text": "one two three", "words": 3}
        assert seqs[-1] == 6
    else:
        # Quart-Trio cancels a connection's handler when its peer leaves: the run ends
        # there, and its log says so (docs/operations.md, "Threads").
        assert (frames[-1]["type"], frames[-1]["reason"]) == ("run_cancelled", "client_gone")


async def test_a_thread_survives_a_restart_on_sqlite(e2e: E2E, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'threads.db'}"
    async with e2e.server(store=store) as live, live.chat(e2e.token("alice")) as chat:
        first = await chat.run_to_end("before the restart", client_id="c1")
        epoch = chat.ready["epoch"]
    thread = first[0]["thread_id"]
    async with e2e.server(store=store) as live, live.chat(e2e.token("alice")) as chat:
        assert chat.ready["epoch"] == epoch
        await chat.send({"type": "history", "thread_id": thread})
        page = await chat.expect("history_page")
        await chat.send(
            {"type": "user_message", "text": "x", "client_id": "c1", "thread_id": thread}
        )
        duplicate = await chat.expect("duplicate_message")
        second = await chat.run_to_end("after it", thread_id=thread)
    assert page["events"][1:] == first
    assert duplicate["run_id"] == first[0]["run_id"]
    assert [frame["thread_seq"] for frame in second] == [8, 9, 10, 11, 12]
    async with e2e.server(store=store) as live, live.chat(e2e.token("bob")) as chat:
        await chat.send({"type": "history", "thread_id": thread})
        assert (await chat.expect("history_page"))["events"] == []
