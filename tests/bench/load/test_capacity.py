from typing import Any

import pytest

from bench.load._capacity import CapacityPlan, capacity_verdict


def row(**kw: Any) -> dict[str, Any]:
    return {"held": 10_000, "rss_per_conn": 13.0 * 1024, "idle_cpu": 0.03} | kw


def test_a_row_within_every_target_meets_them() -> None:
    assert capacity_verdict(row(), CapacityPlan(connections=10_000, servers=())) == "meets targets"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"held": 9_000}, "held 9,000/10,000"),
        ({"rss_per_conn": 15.0 * 1024}, "15.0 KiB/conn > 14"),
        ({"idle_cpu": 0.055}, "idle CPU 5.5% >= 5%"),
    ],
)
def test_each_missed_target_is_named(kw: dict[str, Any], reason: str) -> None:
    plan = CapacityPlan(connections=10_000, servers=())
    assert capacity_verdict(row(**kw), plan) == f"misses: {reason}"


def test_idle_cpu_is_judged_at_the_default_keepalive_only() -> None:
    plan = CapacityPlan(connections=10_000, servers=(), ping_interval_s=5.0)
    assert capacity_verdict(row(idle_cpu=0.2), plan) == "meets targets"
