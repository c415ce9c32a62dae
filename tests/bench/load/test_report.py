"""Rows (medians over rounds), ratios to FastAPI, targets and the Markdown table."""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness._stats import LatencySummary
from bench.load._report import evaluate_targets, render_markdown, render_targets, rows_from
from bench.load._results import Measurement


def _m(server: str, users: int, tps: float, p99: float = 10.0, **kw: Any) -> Measurement:
    values: dict[str, Any] = {
        "server": server,
        "users": users,
        "think_ms": kw.pop("think", 100.0),
        "round": kw.pop("round", 1),
        "verdict": kw.pop("verdict", "ok"),
        "turns": int(tps * 10),
        "turns_per_s": tps,
        "frames_per_s": tps * 6,
        "connected": users,
        "turn": LatencySummary(
            count=10, p50=p99 / 2, p99=p99, p999=p99 * 1.5, mean=p99 / 2, max=p99 * 2
        ),
        "connect": LatencySummary(count=users, p50=1.0, p99=3.0, p999=4.0, mean=1.5, max=5.0),
        "server_cpu": 0.9,
        "server_cpu_us_per_turn": kw.pop("us", 1e6 * 0.9 / tps),
        "rss_per_conn": kw.pop("rss", 20 * 1024.0),
        "client_cpu": kw.pop("client_cpu", 0.3),
    }
    values.update(kw)
    return Measurement(**values)


def test_rows_take_medians_of_valid_rounds_and_ratios_to_fastapi() -> None:
    ms = [
        _m("fastapi", 1000, 1000.0, round=1),
        _m("fastapi", 1000, 1200.0, round=2),
        _m("fastapi", 1000, 1100.0, round=3),
        _m("enclave-lean", 1000, 1500.0, round=1),
        _m("enclave-lean", 1000, 9999.0, round=2, verdict="INVALID: client saturated (95%)"),
        _m("enclave-lean", 1000, 1700.0, round=3),
    ]
    rows = rows_from(ms, order=["fastapi", "enclave-lean"])
    assert [r.server for r in rows] == ["fastapi", "enclave-lean"]
    fastapi, lean = rows
    assert fastapi.turns_per_s == 1100.0
    assert fastapi.ratio == pytest.approx(1.0)
    assert lean.turns_per_s == 1600.0  # the invalid round is left out
    assert lean.valid_rounds == 2
    assert lean.ratio == pytest.approx(1600 / 1100)
    assert lean.verdict.startswith("ok (1 of 3 rounds invalid)")
    assert lean.client_cpu == 0.3


def test_rows_when_no_round_is_valid_keep_the_reason() -> None:
    rows = rows_from([_m("aiohttp", 100, 500.0, verdict="INVALID: only 90/100 users connected")])
    assert rows[0].verdict.startswith("INVALID")
    assert rows[0].turns_per_s == 500.0
    assert rows[0].ratio is None  # no fastapi at this user count


def test_unavailable_server_gets_an_empty_row() -> None:
    ms = [Measurement("enclave-lean", 100, 1, "unavailable: not built", think_ms=100.0)]
    (row,) = rows_from(ms)
    assert row.turns_per_s is None
    assert row.verdict == "unavailable: not built"


def test_markdown_table_has_one_line_per_row_and_escapes_cells() -> None:
    ms = [
        _m("fastapi", 100, 1000.0),
        Measurement(
            "enclave-lean", 100, 1, "unavailable: exited | code 2\nusage: ...", think_ms=100.0
        ),
    ]
    text = render_markdown(rows_from(ms), {"fastapi": "FastAPI+uvicorn"})
    lines = text.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| server | users | turns/s |")
    assert "| FastAPI+uvicorn | 100 | 1,000 | 1.00x |" in lines[2]
    assert "exited \\| code 2 usage: ..." in lines[3]
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:3])
    assert "think ms" not in lines[0]  # one think time: the table of a run of one


def test_targets_met() -> None:
    ms = [
        _m("fastapi", 1000, 1000.0, p99=50.0, us=900.0),
        _m("enclave-lean", 1000, 1400.0, p99=40.0, us=700.0, rss=10 * 1024.0),
        _m("bare-trio", 1000, 1500.0, p99=35.0, us=650.0),
    ]
    targets = {t.name: t for t in evaluate_targets(rows_from(ms))}
    assert targets["lean throughput"].met is True
    assert "1.40x" in targets["lean throughput"].measured
    assert targets["memory per connection"].met is True
    assert targets["session overhead"].met is True  # 700 / 650 - 1 = 7.7 %
    assert targets["isolation"].met is True
    assert "| lean throughput |" in render_targets(list(targets.values()))


def test_targets_missed_and_not_measured() -> None:
    ms = [
        _m("fastapi", 1000, 1000.0, p99=50.0),
        _m("enclave-lean", 1000, 1400.0, p99=60.0, us=1000.0, violations=2),
        _m("bare-trio", 1000, 2000.0, us=500.0),
    ]
    targets = {t.name: t for t in evaluate_targets(rows_from(ms))}
    assert targets["lean throughput"].met is False  # p99 worse
    assert targets["session overhead"].met is False
    assert targets["isolation"].met is False
    none = {t.name: t for t in evaluate_targets([])}
    assert all(t.met is None for name, t in none.items() if name != "isolation")


def test_memory_target_prefers_the_capacity_run() -> None:
    capacity = {"server": "enclave-lean", "rss_per_conn": 15 * 1024.0, "connected": 10000}
    targets = {t.name: t for t in evaluate_targets([], capacity)}
    assert targets["memory per connection"].met is False
    assert "15.0 KiB" in targets["memory per connection"].measured


def test_targets_use_the_closest_user_count_without_1000() -> None:
    ms = [_m("fastapi", 200, 1000.0), _m("enclave-lean", 200, 1500.0, p99=5.0)]
    (speed, *_) = evaluate_targets(rows_from(ms))
    assert "at 200 users" in speed.measured


def test_the_throughput_goal_depends_on_whether_the_agent_waits() -> None:
    ms = [
        _m("fastapi", 1000, 1000.0, p99=50.0),
        _m("enclave-lean", 1000, 1100.0, p99=40.0, us=700.0),
        _m("bare-trio", 1000, 1500.0, p99=35.0, us=650.0),
    ]
    waiting = {t.name: t for t in evaluate_targets(rows_from(ms), agent_delay_ms=2.0)}
    instant = {t.name: t for t in evaluate_targets(rows_from(ms), agent_delay_ms=0.0)}
    assert waiting["lean throughput"].met is True  # 1.1x >= 1.0x
    assert instant["lean throughput"].met is False  # 1.1x < 1.2x
    assert "agent delay 0 ms" in instant["lean throughput"].goal


def test_worker_and_redis_columns_only_when_some_row_has_them() -> None:
    plain = render_markdown(rows_from([_m("enclave-lean", 1000, 2000.0)]))
    assert "redis cmds/turn" not in plain
    assert "CPU per worker" not in plain
    ms = [
        _m("enclave-lean+sqlite", 1000, 2000.0, us=400.0),
        _m(
            "enclave-lean+redis+w2",
            1000,
            2500.0,
            us=500.0,
            workers=2,
            worker_cpu=(0.6, 0.5),
            worker_cpu_us_per_turn=(480.0, 520.0),
            redis_cmds_per_turn=30.25,
            redis_round_trips_per_turn=2.5,
            redis_cpu_us_per_turn=100.0,
            round=1,
        ),
        _m(
            "enclave-lean+redis+w2",
            1000,
            2500.0,
            us=500.0,
            workers=2,
            worker_cpu=(0.8, 0.7),
            worker_cpu_us_per_turn=(500.0, 540.0),
            redis_cmds_per_turn=30.75,
            redis_round_trips_per_turn=2.5,
            redis_cpu_us_per_turn=120.0,
            round=2,
        ),
    ]
    rows = rows_from(ms)
    redis = next(r for r in rows if r.workers == 2)
    assert redis.worker_cpu == pytest.approx((0.7, 0.6))
    assert redis.redis_cmds_per_turn == pytest.approx(30.5)
    assert redis.total_cpu_us_per_turn == pytest.approx(610.0)
    table = render_markdown(rows)
    header = table.splitlines()[0]
    assert "| CPU per worker | µs/turn per worker | redis cmds/turn |" in header
    assert header.endswith("| verdict |")
    assert "| 70% / 60% | 490 / 530 | 30.5 | 2.50 | 110 | 610 | ok |" in table
    sqlite_line = next(line for line in table.splitlines() if "enclave-lean+sqlite" in line)
    assert sqlite_line.endswith("| - | - | - | - | - | - | ok |")


def test_the_redis_target_compares_server_side_cpu_with_sqlite() -> None:
    ms = [
        _m("enclave-lean+sqlite", 1000, 2000.0, us=400.0),
        _m("enclave-lean+redis", 1000, 1800.0, us=450.0, redis_cpu_us_per_turn=100.0),
    ]
    targets = {t.name: t for t in evaluate_targets(rows_from(ms))}
    redis = targets["redis store CPU"]
    assert redis.met is True
    assert redis.measured.startswith("1.38x with Redis's CPU (550 vs 400 µs), 1.12x")
    costly = [
        *ms[:1],
        _m("enclave-lean+redis", 1000, 1800.0, us=500.0, redis_cpu_us_per_turn=150.0),
    ]
    assert {t.name: t for t in evaluate_targets(rows_from(costly))}["redis store CPU"].met is False
    assert "redis store CPU" not in {t.name for t in evaluate_targets(rows_from(ms[1:]))}


def _run_of_two_think_times() -> list[Measurement]:
    """As the default run measures: think 100 at every count, think 0 at 1,000 only."""
    return [
        _m("fastapi", 100, 900.0),
        _m("enclave-lean", 100, 700.0),
        _m("fastapi", 1000, 1800.0, p99=800.0, us=550.0),
        _m("enclave-lean", 1000, 2700.0, p99=700.0, us=500.0),
        _m("bare-trio", 1000, 2800.0, p99=600.0, us=480.0),
        _m("fastapi", 1000, 11000.0, p99=150.0, us=90.0, think=0.0),
        _m("enclave-lean", 1000, 8800.0, p99=180.0, us=115.0, think=0.0),
        _m("bare-trio", 1000, 11600.0, p99=130.0, us=85.0, think=0.0),
        _m("fastapi", 5000, 1700.0),
        _m("enclave-lean", 5000, 600.0, rss=12 * 1024.0),
    ]


def test_rows_are_per_think_time_and_ratios_compare_the_same_think_time() -> None:
    rows = rows_from(_run_of_two_think_times(), order=["fastapi", "enclave-lean", "bare-trio"])
    cells = [(r.think_ms, r.users, r.server) for r in rows]
    assert cells == [  # the think-100 block (first measured), then the think-0 one
        (100.0, 100, "fastapi"),
        (100.0, 100, "enclave-lean"),
        (100.0, 1000, "fastapi"),
        (100.0, 1000, "enclave-lean"),
        (100.0, 1000, "bare-trio"),
        (100.0, 5000, "fastapi"),
        (100.0, 5000, "enclave-lean"),
        (0.0, 1000, "fastapi"),
        (0.0, 1000, "enclave-lean"),
        (0.0, 1000, "bare-trio"),
    ]
    at = {(r.server, r.users, r.think_ms): r for r in rows}
    assert at["enclave-lean", 1000, 100.0].ratio == pytest.approx(1.5)
    assert at["enclave-lean", 1000, 0.0].ratio == pytest.approx(0.8)
    assert at["fastapi", 1000, 0.0].turns_per_s == 11000.0  # not mixed with think 100's


def test_rounds_of_one_cell_are_one_row_and_a_baseline_is_never_borrowed() -> None:
    ms = [
        _m("enclave-lean", 1000, 3000.0, think=0.0, round=1),
        _m("enclave-lean", 1000, 3400.0, think=0.0, round=2),
        _m("fastapi", 1000, 1000.0),  # think 100: not the baseline of think 0
    ]
    lean = next(r for r in rows_from(ms) if r.server == "enclave-lean")
    assert (lean.rounds, lean.turns_per_s, lean.think_ms) == (2, 3200.0, 0.0)
    assert lean.ratio is None


def test_the_table_has_a_think_column_with_several_think_times() -> None:
    rows = rows_from(_run_of_two_think_times())
    lines = render_markdown(rows, {"enclave-lean": "enclave (lean)"}).strip().splitlines()
    assert lines[0].startswith("| server | users | think ms | turns/s | x FastAPI |")
    assert lines[1].startswith("|---|--:|--:|--:|")
    text = "\n".join(lines)
    assert "| enclave (lean) | 1,000 | 100 | 2,700 | 1.50x |" in text
    assert "| enclave (lean) | 1,000 | 0 | 8,800 | 0.80x |" in text
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:])


def test_hot_path_targets_use_the_think_0_row_at_1000_users() -> None:
    rows = rows_from(_run_of_two_think_times())
    targets = {t.name: t for t in evaluate_targets(rows, agent_delay_ms=0.0)}
    speed, overhead = targets["lean throughput"], targets["session overhead"]
    assert "think 0 ms" in speed.goal
    assert speed.measured.startswith("0.80x, p99 180.0 vs 150.0 ms")
    assert speed.measured.endswith("(at 1,000 users, think 0 ms)")
    assert speed.met is False  # at think 100 it would be 1.50x with a better p99
    assert overhead.measured.startswith("+35% CPU/turn (115 vs 85 µs)")
    assert overhead.measured.endswith("at 1,000 users, think 0 ms")
    assert overhead.met is False  # at think 100: +4 %
    memory = targets["memory per connection"]  # unchanged: the largest user count
    assert memory.measured == "12.0 KiB (enclave-lean, 5,000 users of the load run)"


def test_without_a_think_0_row_targets_say_which_think_time_they_used() -> None:
    rows = rows_from(m for m in _run_of_two_think_times() if m.think_ms == 100.0)
    targets = {t.name: t for t in evaluate_targets(rows, agent_delay_ms=0.0)}
    assert targets["lean throughput"].measured.endswith("(at 1,000 users, think 100 ms)")
    assert targets["lean throughput"].met is True
    assert targets["session overhead"].measured.endswith("at 1,000 users, think 100 ms")
    # the user count comes first: a think-0 row at 5,000 users does not replace 1,000's
    far = rows_from([*_run_of_two_think_times()[:5], _m("enclave-lean", 5000, 1.0, think=0.0)])
    (speed, *_) = evaluate_targets(far)
    assert speed.measured.endswith("(at 1,000 users, think 100 ms)")


def test_the_redis_target_stays_at_the_default_think_time() -> None:
    ms = [
        _m("enclave-lean+sqlite", 1000, 2000.0, us=400.0),
        _m("enclave-lean+redis", 1000, 1800.0, us=450.0, redis_cpu_us_per_turn=100.0),
        _m("enclave-lean+sqlite", 1000, 3000.0, us=300.0, think=0.0),
        _m("enclave-lean+redis", 1000, 2000.0, us=600.0, redis_cpu_us_per_turn=100.0, think=0.0),
    ]
    redis = {t.name: t for t in evaluate_targets(rows_from(ms))}["redis store CPU"]
    assert redis.measured.startswith("1.38x with Redis's CPU (550 vs 400 µs)")
    assert redis.measured.endswith("enclave-lean at 1,000 users, think 100 ms")
    assert redis.met is True
