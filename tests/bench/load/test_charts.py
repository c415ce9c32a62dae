"""The charts' lines: one per server and think time, so a line never mixes think times."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load._charts import lines, write_charts
from bench.load._report import Row


def _row(server: str, users: int, think_ms: float, tps: float | None) -> Row:
    p99 = None if tps is None else 1e5 / tps
    return Row(
        server,
        users,
        1,
        1,
        "ok",
        think_ms=think_ms,
        turns_per_s=tps,
        turn_p99=p99,
        rss_per_conn=1e4,
    )


#: The default run's shape: think 100 at every count, think 0 at 1,000 only.
ROWS = [
    _row("fastapi", 100, 100.0, 900.0),
    _row("enclave-lean", 100, 100.0, 700.0),
    _row("fastapi", 1000, 100.0, 1800.0),
    _row("enclave-lean", 1000, 100.0, 600.0),
    _row("fastapi", 5000, 100.0, 1700.0),
    _row("enclave-lean", 5000, 100.0, None),  # unavailable: no point
    _row("fastapi", 1000, 0.0, 11000.0),
    _row("enclave-lean", 1000, 0.0, 8800.0),
]


def test_a_line_per_server_and_think_time() -> None:
    drawn = lines(ROWS, "turns_per_s", {"fastapi": "FastAPI+uvicorn"})
    assert [(d.label, d.xs, d.ys) for d in drawn] == [
        ("FastAPI+uvicorn, think 100 ms", (100, 1000, 5000), (900.0, 1800.0, 1700.0)),
        ("FastAPI+uvicorn, think 0 ms", (1000,), (11000.0,)),
        ("enclave-lean, think 100 ms", (100, 1000), (700.0, 600.0)),
        ("enclave-lean, think 0 ms", (1000,), (8800.0,)),
    ]
    # a server keeps its colour; the think time has its own line style
    assert [d.color for d in drawn] == ["C0", "C0", "C1", "C1"]
    assert [d.style for d in drawn] == ["-", "--", "-", "--"]


def test_one_think_time_labels_the_server_only() -> None:
    drawn = lines([r for r in ROWS if r.think_ms == 100.0], "turns_per_s", {})
    assert [d.label for d in drawn] == ["fastapi", "enclave-lean"]
    assert {d.style for d in drawn} == {"-"}


def test_the_charts_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = write_charts(ROWS, tmp_path, {})
    assert [p.name for p in written] == ["throughput.png", "p99.png", "memory.png"]
    assert all(p.stat().st_size > 0 for p in written)
