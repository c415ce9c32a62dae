"""A tiny real run of ``python -m bench run``: one peer, three users, load-generator
processes speaking the child protocol.

Counts are asserted, never timings.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from bench.harness._progress import Progress
from bench.harness._servers import SERVERS
from bench.load._runner import Plan, run_benchmark


def test_the_harness_end_to_end(tmp_path: Path) -> None:
    plan = Plan(
        users=(3,),
        servers=(SERVERS["websockets"],),
        think_ms=20.0,
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


def test_the_llm_agent_mode(tmp_path: Path) -> None:
    """``--agent llm``: the mock model server is started and the server streams from it."""
    plan = Plan(
        users=(3,),
        servers=(SERVERS["enclave-lean"],),
        think_ms=20.0,
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
