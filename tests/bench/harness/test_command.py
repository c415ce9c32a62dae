"""The glue ``bench soak`` and ``bench attacks`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from bench.harness._command import RESULTS, override, results_dir, run_checked


@attrs.frozen
class _Plan:
    users: int = 10
    seconds: float = 1.0


def test_override_keeps_what_the_user_did_not_give() -> None:
    assert override(_Plan(), {"users": 5, "seconds": None}) == _Plan(users=5, seconds=1.0)


def test_results_dir_defaults_under_bench_results(tmp_path: Path) -> None:
    assert results_dir(tmp_path, "soak") == tmp_path
    default = results_dir(None, "soak")
    assert default.parent == RESULTS
    assert default.name.endswith("-soak")


@pytest.mark.parametrize(("ok", "code"), [(True, 0), (False, 1)])
def test_run_checked_prints_and_exits_by_the_checks(
    ok: bool, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(plan: _Plan, out: Path, **_: Any) -> dict[str, Any]:
        return {"markdown": f"# {plan.users} users", "ok": ok}

    assert run_checked("soak", run, _Plan(), tmp_path, ["python"]) == code
    captured = capsys.readouterr()
    assert "# 10 users" in captured.out
    assert f"results: {tmp_path}/" in captured.err


def test_run_checked_interrupted_is_130(tmp_path: Path) -> None:
    def run(plan: _Plan, out: Path, **_: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    assert run_checked("attacks", run, _Plan(), tmp_path, ["python"]) == 130
