"""``bench attacks`` end to end on a tiny plan: the windows, the checks, the files.

The p99 ratios depend on the machine and are the command's business; what is
asserted is that the run is cut into its windows and that no user lost a run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench._cli import main
from bench.attacks._runner import AttackPlan, quick_plan, run_attacks
from bench.harness._progress import Progress


def test_a_tiny_run_has_a_baseline_an_attack_and_a_recovery(tmp_path: Path) -> None:
    plan = AttackPlan(
        users=5,
        think_ms=100.0,
        window_s=1.0,
        gap_s=1.5,
        warmup_s=0.5,
        attacks=("oversized",),
        open_timeout_s=1.0,
        send_timeout_s=1.0,
        scale=0.25,
        server_core=None,
    )
    results = run_attacks(plan, tmp_path, progress=Progress(io.StringIO(), tty=False))
    run = results["runs"]["lean"]
    assert [w["name"] for w in run["windows"]] == ["baseline", "oversized", "recovery"]
    assert all(w["stats"]["turns"] > 0 for w in run["windows"])
    assert run["windows"][0]["ratio"] == 1.0
    checks = {c["name"]: c for c in run["checks"]}
    for name in ("server alive", "users connected", "no run lost", "isolation"):
        assert checks[name]["ok"], checks[name]
    assert checks["oversized: server"]["ok"], checks["oversized: server"]
    assert json.loads((tmp_path / "results.json").read_text())["kind"] == "attacks"
    assert "## enclave-lean" in (tmp_path / "results.md").read_text()


def test_quick_plan_is_small() -> None:
    plan = quick_plan()
    assert plan.quick
    assert plan.users < AttackPlan().users
    assert plan.connections("slowloris") == 100
    assert "100 connections" in plan.intensity("slowloris")


def test_unknown_attacks_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attacks", "--attacks", "flood,teleport"]) == 2
    assert "teleport" in capsys.readouterr().err
