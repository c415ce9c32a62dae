"""A tiny real run of ``python -m bench run``: one peer, three users, load-generator
processes speaking the child protocol.

Counts are asserted, never timings.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs

from bench.harness._progress import Progress
from bench.harness._servers import SERVERS
from bench.load._runner import Plan, run_benchmark


def test_the_harness_end_to_end(tmp_path: Path) -> None:
    plan = Plan(
        users=(3,),
        servers=(SERVERS["websockets"],),
        think_ms=(20.0,),
        agent_delay_ms=0.0,
        duration_s=1.0,
        warmup_s=0.3,
        server_core=None,
        loop="asyncio",
    )
    stream = io.StringIO()
    results = run_benchmark(plan, tmp_path, progress=Progress(stream, tty=False))
    (m,) = results["measurements"]
    assert m["server"] == "websockets"
    assert m["connected"] == 3
    assert m["turns"] > 0
    assert m["violations"] == 0
    assert m["errors"] == {}
    assert m["server_cpu"] is not None
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"][0]["server"] == "websockets"
    table = (tmp_path / "results.md").read_text()
    assert "| websockets | 3 |" in table
    assert "websockets" in stream.getvalue()


def test_every_think_time_is_a_cell_of_the_run(tmp_path: Path) -> None:
    plan = Plan(
        users=(3,),
        servers=(SERVERS["websockets"],),
        think_ms=(20.0, 0.0),
        agent_delay_ms=0.0,
        duration_s=0.5,
        warmup_s=0.2,
        server_core=None,
        loop="asyncio",
    )
    results = run_benchmark(plan, tmp_path, progress=Progress(io.StringIO(), tty=False))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [m["think_ms"] for m in saved["measurements"]] == [20.0, 0.0]
    assert all(m["turns"] > 0 and m["violations"] == 0 for m in results["measurements"])
    assert [(r["users"], r["think_ms"]) for r in saved["rows"]] == [(3, 20.0), (3, 0.0)]
    assert saved["plan"]["cells"] == [[3, 20.0], [3, 0.0]]
    table = (tmp_path / "results.md").read_text()
    assert "| websockets | 3 | 20 |" in table
    assert "| websockets | 3 | 0 |" in table
    assert "think 20 and 0 ms (±50 %) at every user count" in table
    assert len(list((tmp_path / "logs").glob("r1-3-*-websockets"))) == 2  # one each


def test_the_cells_of_a_plan() -> None:
    servers = (SERVERS["fastapi"],)
    default = Plan(users=(100, 1000, 5000), servers=servers, extra_cells=((1000, 0.0),))
    assert default.cells() == ((100, 100.0), (1000, 100.0), (1000, 0.0), (5000, 100.0))
    crossed = Plan(users=(20, 200), servers=servers, think_ms=(100.0, 0.0))
    assert crossed.cells() == ((20, 100.0), (20, 0.0), (200, 100.0), (200, 0.0))
    # an extra cell the cross product has is measured once
    again = attrs.evolve(crossed, extra_cells=((200, 0.0), (50, 10.0)))
    assert again.cells() == ((20, 100.0), (20, 0.0), (50, 10.0), (200, 100.0), (200, 0.0))
    assert Plan(users=(10,), servers=servers).cells() == ((10, 100.0),)


def test_the_llm_agent_mode(tmp_path: Path) -> None:
    """``--agent llm``: the mock model server is started and the server streams from it."""
    plan = Plan(
        users=(3,),
        servers=(SERVERS["enclave-lean"],),
        think_ms=(20.0,),
        duration_s=1.0,
        warmup_s=0.3,
        server_core=None,
        loop="asyncio",
        agent="llm",
        llm_tokens=3,
        llm_token_delay_ms=1.0,
    )
    results = run_benchmark(plan, tmp_path, progress=Progress(io.StringIO(), tty=False))
    (m,) = results["measurements"]
    assert m["turns"] > 0
    assert m["errors"] == {}
    assert m["violations"] == 0
    assert "agent openai streaming 3 words" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "logs" / "mock-llm.log").exists()
