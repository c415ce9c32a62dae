"""Splitting a supervisor's CPU by worker, and a measurement of several workers on Redis:
pure functions of what the harness read."""

from __future__ import annotations

import attrs
import pytest

from bench.harness._procfs import CoreTimes, ProcSample
from bench.harness._redis import RedisWindow
from bench.harness._servers import parse_servers
from bench.load._results import LoadResult
from bench.load._runner import Probe, to_measurement, worker_figures


def test_worker_figures_split_cpu_and_turns_by_connections() -> None:
    start = {10: ProcSample(1.0, 0), 11: ProcSample(5.0, 0), 12: ProcSample(7.0, 0)}
    end = {
        10: ProcSample(1.1, 0),
        11: ProcSample(10.0, 0),
        12: ProcSample(11.0, 0),
        13: ProcSample(1.0, 0),
    }
    figures = worker_figures(
        10,
        start,
        end,
        idle_fds={11: 20, 12: 20},
        connected_fds={11: 620, 12: 420},
        index={11: 1, 12: 0},  # ENCLAVE_WORKER_INDEX: pid 12 is worker 0
        window_s=10.0,
        turns=10_000,
    )
    assert figures.supervisor_cpu == pytest.approx(0.01)
    assert figures.cpu == pytest.approx((0.4, 0.5))  # 13 started late: left out
    assert figures.conns == (400, 600)
    # worker 0: 4 s over 4,000 turns; worker 1: 5 s over 6,000 turns
    assert figures.cpu_us_per_turn == pytest.approx((1000.0, 833.33), rel=1e-4)


def _result(turns: int) -> LoadResult:
    return LoadResult(
        users=100,
        connected=100,
        connect_ms=(1.0,),
        turn_ms=(5.0,),
        turns=turns,
        window_s=10.0,
        frames_rx=turns * 5,
        frames_tx=turns,
        cpu_s=2.0,
    )


def _cores(used0: int, used1: int, total: int = 1000) -> dict[int, CoreTimes]:
    return {0: CoreTimes(used0, 0, total), 1: CoreTimes(used1, 0, total)}


def test_a_measurement_of_two_workers_on_redis() -> None:
    (spec,) = parse_servers("enclave-lean+redis+w2")
    probe = Probe(
        idle=ProcSample(0.0, 100 * 1024 * 1024),
        connected=ProcSample(0.0, 102 * 1024 * 1024),
        start=ProcSample(10.0, 0),
        end=ProcSample(20.0, 0),  # 1 core-second per second over the window
        window_s=10.0,
        harness_cpu_s=0.0,
        cores_start=_cores(0, 0, 0),
        cores_end=_cores(700, 700),  # 1.4 cores busy: 1.0 server, 0.2 redis, 0.2 clients
        redis=RedisWindow(
            calls={"evalsha": 20_000, "xadd": 60_000},
            round_trips=20_000.0,
            script_calls=60_000.0,
            cpu_s=2.0,
            sampled=100,
        ),
    )
    m = to_measurement(
        spec,
        100,
        1,
        _result(10_000),
        probe,
        think_ms=100.0,
        client_cores=1,
        client_procs=1,
        server_core=0,
        client_core_ids=(1,),
        shared_cores=(0, 1),
        workers=2,
    )
    assert m.workers == 2
    assert m.think_ms == 100.0
    assert m.server_cpu_us_per_turn == pytest.approx(1000.0)
    assert m.redis_cpu == pytest.approx(0.2)
    assert m.redis_cpu_us_per_turn == pytest.approx(200.0)
    assert m.redis_cmds_per_turn == pytest.approx(8.0)
    assert m.redis_round_trips_per_turn == pytest.approx(2.0)
    assert m.total_cpu_us_per_turn == pytest.approx(1200.0)
    assert m.server_core_other == pytest.approx(0.0, abs=1e-9)  # all of it accounted for
    assert m.client_core_other is None
    assert m.verdict == "ok"
    noisy = to_measurement(
        spec,
        100,
        1,
        _result(10_000),
        attrs.evolve(probe, cores_end=_cores(1000, 1000)),
        think_ms=100.0,
        client_cores=1,
        client_procs=1,
        shared_cores=(0, 1),
        workers=2,
    )
    assert noisy.verdict.startswith("INVALID: server core shared (60% used by others)")


def test_redis_on_the_server_core_is_not_noise() -> None:
    (spec,) = parse_servers("enclave-lean+redis")
    probe = Probe(
        idle=None,
        connected=None,
        start=ProcSample(10.0, 0),
        end=ProcSample(17.0, 0),
        window_s=10.0,
        harness_cpu_s=0.0,
        cores_start=_cores(0, 0, 0),
        cores_end=_cores(950, 200),  # 0.7 server + 0.25 redis on core 0
        redis=RedisWindow(calls={}, round_trips=0.0, script_calls=0.0, cpu_s=2.5, sampled=0),
    )
    m = to_measurement(
        spec,
        100,
        1,
        _result(10_000),
        probe,
        think_ms=100.0,
        client_cores=1,
        client_procs=1,
        server_core=0,
        client_core_ids=(1,),
    )
    assert m.server_core_other == pytest.approx(0.0, abs=1e-9)
    assert m.verdict == "ok"
