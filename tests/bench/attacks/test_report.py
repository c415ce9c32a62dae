"""The attacks' judgement on made-up figures: windows, expectations, checks, Markdown."""

from __future__ import annotations

from typing import Any

import pytest

from bench.attacks._report import (
    Window,
    expectation,
    judge_transport,
    render_markdown,
    window_stats,
)

PLAN: dict[str, Any] = {
    "users": 3,
    "ratio_limit": 2.0,
    "quick": True,
    "think_ms": 100.0,
    "agent_delay_ms": 2.0,
    "window_s": 1.0,
    "gap_s": 0.5,
    "rate_per_s": 20.0,
    "rate_burst": 40,
    "open_timeout_s": 2.0,
    "send_timeout_s": 2.0,
}


def test_window_stats_take_the_turns_sent_inside() -> None:
    timed = [[9.9, 500.0], [10.0, 1.0], [10.5, 2.0], [10.99, 3.0], [11.0, 900.0]]
    stats = window_stats(Window("w", 10.0, 11.0), timed, [[10.2, "turn_lost"]], [[12.0, 1006]])
    assert stats["turns"] == 3
    assert stats["p50_ms"] == 2.0
    assert stats["max_ms"] == 3.0
    assert stats["failed"] == 1
    assert stats["lost"] == 0
    empty = window_stats(Window("w", 0.0, 1.0), [], [], [])
    assert empty["turns"] == 0
    assert empty["p99_ms"] is None


@pytest.mark.parametrize(
    ("kind", "stats", "transport", "status"),
    [
        ("flood", {"close_codes": {"1008": 3}, "errors": {"rate_limited": 9}}, "lean", "ok"),
        ("flood", {"close_codes": {}, "errors": {"rate_limited": 9}}, "lean", "FAIL"),
        ("oversized", {"close_codes": {"1009": 10}, "server_closed": 10}, "lean", "ok"),
        ("oversized", {"close_codes": {"1009": 5}, "server_closed": 10}, "lean", "FAIL"),
        ("slowloris", {"server_closed": 4, "age_s": {"max": 2.1}}, "lean", "ok"),
        ("slowloris", {"server_closed": 4, "age_s": {"max": 9.0}}, "lean", "FAIL"),
        ("slowloris", {"server_closed": 4, "age_s": {"max": 5.1}}, "asgi", "ok"),
        ("slow_reader", {"server_closed": 2, "age_s": {"max": 4.0}}, "lean", "ok"),
        ("slow_reader", {"server_closed": 0}, "lean", "FAIL"),
        ("slow_reader", {"server_closed": 0}, "asgi", "known"),
        ("churn", {"ready": 100}, "lean", "ok"),
        ("churn", {"ready": 100, "failures": {"TimeoutError": 1}}, "lean", "ok"),
        ("churn", {"ready": 100, "failures": {"crashed:KeyError": 1}}, "lean", "FAIL"),
        ("churn", {"ready": 100, "failures": {"cut_at_end": 3}}, "lean", "ok"),
        ("nonsense", {}, "lean", "FAIL"),
    ],
)
def test_expectation(kind: str, stats: dict[str, Any], transport: str, status: str) -> None:
    got, detail = expectation(
        kind, stats, transport=transport, open_timeout_s=2.0, send_timeout_s=2.0
    )
    assert got == status, detail


def test_handshakes_refused_429_are_the_server_shedding_an_attacker() -> None:
    stats = {"close_codes": {"1008": 2}, "refused": {"429": 1234}}
    got, detail = expectation(
        "flood", stats, transport="lean", open_timeout_s=2.0, send_timeout_s=2.0
    )
    assert got == "ok"
    assert detail.endswith("; 1,234 handshakes refused 429")
    churn = expectation(
        "churn", {"ready": 5}, transport="lean", open_timeout_s=2.0, send_timeout_s=2.0
    )
    assert churn == ("ok", "5 connect/ready/close cycles")


def _run(ratio: float, errors: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "server_alive": True,
        "users": {
            "result": {"connected": 3, "errors": errors or {}, "violations": 0},
            "lost": [],
        },
        "windows": [
            {"name": "baseline", "kind": "baseline", "stats": {}, "ratio": 1.0},
            {"name": "flood", "kind": "attack", "ratio": ratio, "server": ("ok", "closed")},
        ],
    }


def test_judge_passes_a_clean_run_and_fails_a_slow_or_lossy_one() -> None:
    assert all(c["ok"] for c in judge_transport(_run(1.5), PLAN))
    slow = {c["name"]: c for c in judge_transport(_run(2.5), PLAN)}
    assert not slow["flood: p99"]["ok"]
    assert "2.50x" in slow["flood: p99"]["detail"]
    lossy = {c["name"]: c for c in judge_transport(_run(1.0, {"turn_lost": 1}), PLAN)}
    assert not lossy["no run lost"]["ok"]


def test_markdown_has_a_row_per_window_and_the_checks() -> None:
    stats = {"turns": 5, "turns_per_s": 5.0, "p50_ms": 1.0, "p99_ms": 2.0}
    run = _run(1.5)
    for window in run["windows"]:
        window["stats"] = stats
    run["checks"] = judge_transport(run, PLAN)
    run["ok"] = True
    results = {
        "plan": PLAN,
        "machine": {"cpu_model": "cpu", "nproc": 2},
        "topology": "not pinned",
        "command": "python -m bench attacks",
        "ok": True,
        "runs": {"lean": run},
    }
    text = render_markdown(results)
    assert "## enclave-lean: PASS" in text
    assert "| flood |" in text
    assert "1.50x" in text
    assert "| no run lost | ok |" in text
