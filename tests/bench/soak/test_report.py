"""The soak's judgement on made-up samples: the slope, each check, Markdown, the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.soak._report import Sample, judge, render_markdown, slope_per_min, write_chart

PLAN: dict[str, Any] = {
    "turns": 100,
    "cycles": 10,
    "warmup_s": 10.0,
    "rss_slope_limit_kib_min": 256.0,
    "quick": True,
    "transport": "lean",
    "agent_delay_ms": 2.0,
    "slots": 4,
    "turns_per_connection": 10,
    "cancel_p": 0.05,
    "drop_p": 0.02,
    "duration_s": 60.0,
    "sample_every_s": 1.0,
}
COUNTS: dict[str, int] = {
    "turns_sent": 120,
    "turns_done": 118,
    "turns_dropped": 2,
    "cycles": 12,
    "terminal:agent_completed": 110,
}
CLEAN: dict[str, Any] = {"counts": COUNTS, "violations": 0}


def _with(**changes: int) -> dict[str, Any]:
    return {"counts": {**COUNTS, **changes}, "violations": 0}


def _samples(kib_per_min: float, *, fds: int = 9) -> list[Sample]:
    return [Sample(float(t), 50_000 + round(kib_per_min * t / 60), fds) for t in range(0, 61)]


def test_slope_is_least_squares_per_minute() -> None:
    points = [(float(t), 100.0 + 2.0 * t) for t in range(10)]
    assert slope_per_min(points) == pytest.approx(120.0)
    assert slope_per_min([(0.0, 1.0), (1.0, 2.0)]) is None
    assert slope_per_min([(5.0, 1.0)] * 4) is None


def _checks(client: dict[str, Any], samples: list[Sample], **kw: Any) -> dict[str, bool]:
    args: dict[str, Any] = {"load_s": 60.0, "fd_baseline": 9, "fd_final": 9, "server_alive": True}
    args.update(kw)
    checks, _ = judge(PLAN, client, samples, **args)
    return {c.name: c.ok for c in checks}


def test_a_clean_flat_soak_passes() -> None:
    assert all(_checks(CLEAN, _samples(0.0)).values())


def test_growth_after_the_warmup_fails() -> None:
    assert not _checks(CLEAN, _samples(1024.0))["RSS slope"]
    assert _checks(CLEAN, _samples(100.0))["RSS slope"]


def test_an_fd_leak_fails() -> None:
    assert not _checks(CLEAN, _samples(0.0), fd_final=12)["fds back to baseline"]
    assert not _checks(CLEAN, _samples(0.0), fd_final=None)["fds back to baseline"]


def test_a_turn_without_its_terminal_fails() -> None:
    assert not _checks(_with(turns_done=117), _samples(0.0))["one terminal per turn"]
    assert not _checks(_with(extra_terminal=1), _samples(0.0))["one terminal per turn"]
    closed = {"counts": {**COUNTS, "unexpected_close:1011": 1}}
    assert not _checks(closed, _samples(0.0))["one terminal per turn"]


def test_shortfalls_violations_and_a_dead_server_fail() -> None:
    got = _checks(_with(turns_sent=50, turns_done=50, turns_dropped=0), _samples(0.0))
    assert not got["turns"]
    assert got["cycles"]
    assert not _checks(dict(CLEAN, violations=1), _samples(0.0))["isolation"]
    assert not _checks(CLEAN, _samples(0.0), server_alive=False)["server alive"]


def test_markdown_and_chart(tmp_path: Path) -> None:
    samples = _samples(10.0)
    checks, figures = judge(
        PLAN, CLEAN, samples, load_s=60.0, fd_baseline=9, fd_final=9, server_alive=True
    )
    chart = write_chart(
        samples, tmp_path, warmup_s=10.0, load_s=60.0, slope=figures["rss_slope_kib_min"]
    )
    assert chart is not None
    assert chart.read_bytes().startswith(b"\x89PNG")
    results = {
        "plan": PLAN,
        "figures": figures,
        "checks": [c.as_dict() for c in checks],
        "machine": {"cpu_model": "cpu", "nproc": 2},
        "topology": "not pinned",
        "command": "python -m bench soak --quick",
        "client": {"turn_ms": {"p50": 1.0, "p99": 2.0}},
    }
    text = render_markdown(results, chart)
    assert "soak (quick): PASS" in text
    assert "| RSS slope | ok |" in text
    assert "![server RSS and fds](soak.png)" in text
