"""Minimal reproductions of what the chaos test found, on an in-process server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

if TYPE_CHECKING:
    from tests.app.conftest import E2E

TERMINAL = ("agent_completed", "agent_error", "run_cancelled")


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_concurrent_runs_on_one_connection_all_end(
    e2e: E2E, tmp_path: Path, durable: bool
) -> None:
    """Four runs at once on one connection, ten times: each ends, nothing is closed 1011.

    Regression: on SQLite, a frame queued while ``_flush`` waited for a commit made it
    close the connection 1011 ("thread store too slow").
    """
    store = f"sqlite:{tmp_path / 'threads.db'}" if durable else "memory"
    async with e2e.server(store=store, agent_delay_ms=1) as live, live.chat() as chat:
        for round_no in range(10):
            for k in range(4):
                await chat.send(
                    {
                        "type": "user_message",
                        "text": "a b c",
                        "thread_id": f"t{k}",
                        "client_id": f"r{round_no}-{k}",
                    }
                )
            ended = 0
            with trio.fail_after(10):
                while ended < 4:
                    frame = await chat.recv()
                    assert frame["type"] != "error", frame
                    ended += frame["type"] in TERMINAL
