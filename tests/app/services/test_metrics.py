"""The metrics object and its collector: each counter as Prometheus reads it."""

from __future__ import annotations

import time

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from app.services._metrics import (
    LAG_BUCKETS_S,
    REFUSAL_REASONS,
    Histogram,
    LabeledHistogram,
    Metrics,
    Traffic,
    watch_event_loop,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def types(metrics: Metrics) -> dict[str, str]:
    text = metrics.render().decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_histogram_buckets_are_inclusive_upper_bounds_and_cumulative() -> None:
    histogram = Histogram((0.5, 0.1, 1.0))  # any order
    for value in (0.05, 0.1, 0.3, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("0.5", 3), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.45)


def test_labeled_histogram_keeps_one_child_per_value() -> None:
    family = LabeledHistogram("op", (1.0,))
    append = family.labels("append")
    assert family.labels("append") is append
    append.observe(0.5)
    family.labels("read").observe(2.0)
    assert [(op, h.count) for op, h in family.items()] == [("append", 1), ("read", 1)]


def test_a_fresh_registry_exposes_every_metric_at_zero() -> None:
    samples = scrape(Metrics())
    for name in (
        "enclave_connections_open",
        "enclave_runs_started_total",
        "enclave_runs_completed_total",
        "enclave_slow_consumer_closes_total",
        "enclave_rate_limit_closes_total",
        "enclave_isolation_violations_total",
        "enclave_turn_seconds_count",
        "enclave_event_loop_lag_seconds_count",
    ):
        assert samples[name, ()] == 0, name
    for reason in REFUSAL_REASONS:
        assert samples["enclave_handshakes_refused_total", (("reason", reason),)] == 0
    assert samples["enclave_runs_cancelled_total", (("reason", "server_shutdown"),)] == 0
    assert samples["enclave_runs_failed_total", (("code", "run_timeout"),)] == 0
    for direction in ("in", "out"):
        assert samples["enclave_frames_total", (("direction", direction),)] == 0
        assert samples["enclave_bytes_total", (("direction", direction),)] == 0


def test_metric_types() -> None:
    kinds = types(Metrics())
    assert kinds["enclave_connections_open"] == "gauge"
    assert kinds["enclave_connections_closed"] == "counter"
    assert kinds["enclave_turn_seconds"] == "histogram"
    assert kinds["enclave_event_loop_lag_seconds"] == "histogram"
    assert kinds["enclave_store_seconds"] == "histogram"


def test_each_counter_moves_when_its_event_is_counted() -> None:
    metrics = Metrics()
    metrics.connections_open = 2
    metrics.traffic.frames_in += 3
    metrics.traffic.bytes_out += 120
    metrics.refused("token")
    metrics.refused("token")
    metrics.closed(1008, "slow_consumer")
    metrics.closed(1008, "rate_limited")
    metrics.closed(1001, "server_shutdown")
    metrics.closed(None, None)
    metrics.turn_seconds.observe(0.003)
    samples = scrape(metrics)
    assert samples["enclave_connections_open", ()] == 2
    assert samples["enclave_frames_total", (("direction", "in"),)] == 3
    assert samples["enclave_bytes_total", (("direction", "out"),)] == 120
    assert samples["enclave_handshakes_refused_total", (("reason", "token"),)] == 2
    closed = {labels[0][1]: v for (n, labels), v in samples.items() if n.endswith("closed_total")}
    assert closed == {"1008": 2, "1001": 1, "peer": 1}
    assert samples["enclave_slow_consumer_closes_total", ()] == 1
    assert samples["enclave_rate_limit_closes_total", ()] == 1
    assert samples["enclave_turn_seconds_bucket", (("le", "0.005"),)] == 1
    assert samples["enclave_turn_seconds_bucket", (("le", "0.0025"),)] == 0
    assert samples["enclave_turn_seconds_sum", ()] == pytest.approx(0.003)


def test_store_seconds_is_exposed_once_an_operation_is_observed() -> None:
    metrics = Metrics()
    assert ("enclave_store_seconds_count", (("op", "append"),)) not in scrape(metrics)
    metrics.store_seconds.labels("append").observe(0.0002)
    samples = scrape(metrics)
    assert samples["enclave_store_seconds_count", (("op", "append"),)] == 1
    assert samples["enclave_store_seconds_bucket", (("le", "0.00025"), ("op", "append"))] == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.runs_started = 5
    assert first.registry is not second.registry
    assert scrape(second)["enclave_runs_started_total", ()] == 0


def test_process_metrics_are_namespaced() -> None:
    names = {name for name, _ in scrape(Metrics())}
    if any(name.startswith("enclave_process_") for name in names):  # Linux: /proc
        assert "enclave_process_open_fds" in names


def test_traffic_starts_at_zero() -> None:
    traffic = Traffic()
    assert [traffic.frames_in, traffic.frames_out, traffic.bytes_in, traffic.bytes_out] == [0] * 4


async def test_event_loop_lag_records_how_late_the_watcher_woke() -> None:
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_event_loop, metrics, 0.05)
        await trio.sleep(0.01)
        time.sleep(0.12)  # noqa: ASYNC251 - the point: the loop is blocked, the watcher late
        with trio.fail_after(2):
            while metrics.loop_lag_seconds.count < 2:  # noqa: ASYNC110 - a counter, no event
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert metrics.loop_lag_seconds.sum >= 0.05
    late = dict(metrics.loop_lag_seconds.cumulative())
    assert late["0.025"] < metrics.loop_lag_seconds.count
    assert len(late) == len(LAG_BUCKETS_S) + 1
