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
