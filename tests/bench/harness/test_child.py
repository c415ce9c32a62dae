"""The child-process protocol: a child end to end (its job in, its events out, stopped
on exit) and the event loop a job asks for."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.attacks._attackers import AttackConfig
from bench.harness._child import Child, _loop_factory
from bench.harness._spawn import ProcessSet, free_port


def test_an_attack_child_reports_refused_connections(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    now = time.monotonic()
    config = AttackConfig(
        host="127.0.0.1",
        port=port,
        secret="x" * 32,
        kind="churn",
        start_at=now + 1.0,
        end_at=now + 2.0,
        connections=1,
    )
    job = {"role": "attack", "config": config.as_dict(), "background": True}
    with ProcessSet() as procs:
        with Child(procs, job, cores=None, log_path=tmp_path / "child.log") as child:
            child.wait_for("ready", 20.0)
            began = child.wait_for("attacking", 10.0)
            result = child.wait_for("result", 10.0)
            code = child.proc.wait(10.0)
        assert child.proc.poll() is not None
    assert code == 0
    assert began["at"] >= config.start_at - 0.01
    assert began["at"] <= result["at"]
    stats = result["stats"]
    # How many tries fit in the window depends on how fast the child started; every
    # one of them is refused and counted.
    assert stats["ready"] == 0
    assert sum(stats["failures"].values()) == stats["opened"]
    assert set(stats["failures"]) <= {"ConnectionRefusedError", "cut_at_end"}


def test_a_job_runs_on_uvloop_unless_it_asks_for_asyncio() -> None:
    assert _loop_factory("asyncio") is None
    uvloop = pytest.importorskip("uvloop")
    assert _loop_factory("auto") is uvloop.new_event_loop
    assert _loop_factory("uvloop") is uvloop.new_event_loop
