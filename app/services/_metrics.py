"""The server's metrics: plain counters written on the hot path, read at scrape time.

A chat turn costs the lean transport about 114 us of CPU; a ``prometheus_client``
counter takes a lock per increment and its histogram walks its buckets with a lock
per bucket. So the server keeps plain ints (and small histograms of its own) on one
:class:`Metrics` object per process, built with the
:class:`~app.services._services.ServerLifecycle` and passed down; :class:`_Collector`
turns them into metric families only when ``/metrics`` is scraped, into the
``CollectorRegistry`` the same object owns. Trio runs one thread: a plain ``+= 1``
is never torn.

Labels are a closed set of names chosen by the server (close codes, refusal and
cancel reasons, error codes, ``in``/``out``, a store's operation): never a user id,
a token, a thread, run or connection id.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import attrs
import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..core._codes import CancelReason, RunErrorCode

__all__ = [
    "LAG_BUCKETS_S",
    "LAG_INTERVAL_S",
    "REFUSAL_REASONS",
    "STORE_BUCKETS_S",
    "TURN_BUCKETS_S",
    "Histogram",
    "LabeledHistogram",
    "Metrics",
    "Traffic",
    "watch_event_loop",
]

#: Upper bounds of ``enclave_turn_seconds`` (a turn of the echo agent without delay is
#: well under a millisecond; a model's turn takes seconds).
TURN_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Upper bounds of ``enclave_event_loop_lag_seconds``.
LAG_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Upper bounds of ``enclave_store_seconds``.
STORE_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
#: How often :func:`watch_event_loop` wakes to see how late it is.
LAG_INTERVAL_S: Final = 0.5
#: ``reason`` of ``enclave_handshakes_refused_total``, each exposed from 0.
REFUSAL_REASONS: Final = (
    "origin",
    "subprotocol",
    "token",
    "rate",
    "cooldown",
    "user_connections",
    "admission",
    "full",
    "draining",
)


class Traffic:
    """WebSocket data messages and bytes, in and out: counted on every frame.

    One per process (:attr:`Metrics.traffic`), handed to each connection's transport;
    a transport built without one (a test, a benchmark's bare handler) counts into
    its own.
    """

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        #: Data messages received (in) and queued to send (out).
        self.frames_in = 0
        self.frames_out = 0
        #: Bytes read from and written to the peers (lean: on the wire, control frames
        #: included; asgi: message payloads, Hypercorn frames them).
        self.bytes_in = 0
        self.bytes_out = 0


class Histogram:
    """Observations counted in fixed buckets (upper bounds, inclusive), plus their sum.

    :meth:`observe` is a bisection and two additions: no lock, no allocation.
    """

    __slots__ = ("_bounds", "_counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return out


class LabeledHistogram:
    """Histograms with the same buckets, one per value of one label.

    The values must be a small closed set the server names (a store's ``append``,
    ``read``...), never data from a user.
    """

    __slots__ = ("_bounds", "_children", "label")

    def __init__(self, label: str, bounds: Sequence[float]) -> None:
        self.label = label
        self._bounds = tuple(bounds)
        self._children: dict[str, Histogram] = {}

    def labels(self, value: str) -> Histogram:
        """The histogram for ``value``; keep it rather than asking on every observation."""
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = Histogram(self._bounds)
        return child

    def items(self) -> list[tuple[str, Histogram]]:
        return sorted(self._children.items())


def _counts(keys: Iterable[str]) -> dict[str, int]:
    return dict.fromkeys(map(str, keys), 0)


@attrs.define(eq=False)
class Metrics:
    """Every metric of one server process, and the registry ``/metrics`` renders.

    Built with the lifecycle (once per ``serve()``); the transports, the routes and each
    connection's emitter write to it. See ``docs/operations.md`` for each metric.
    """

    #: WebSocket sessions running now.
    connections_open: int = 0
    runs_started: int = 0
    runs_completed: int = 0
    slow_consumer_closes: int = 0
    rate_limit_closes: int = 0
    #: Must stay 0: a frame or event refused because it was not this connection's.
    isolation_violations: int = 0
    traffic: Traffic = attrs.field(factory=Traffic)
    closed_by_code: dict[str, int] = attrs.field(factory=dict)
    refused_by_reason: dict[str, int] = attrs.field(factory=lambda: _counts(REFUSAL_REASONS))
    cancelled_by_reason: dict[str, int] = attrs.field(factory=lambda: _counts(CancelReason))
    failed_by_code: dict[str, int] = attrs.field(factory=lambda: _counts(RunErrorCode))
    turn_seconds: Histogram = attrs.field(factory=lambda: Histogram(TURN_BUCKETS_S))
    loop_lag_seconds: Histogram = attrs.field(factory=lambda: Histogram(LAG_BUCKETS_S))
    #: For the thread store: ``metrics.store_seconds.labels("append").observe(dt)``.
    store_seconds: LabeledHistogram = attrs.field(
        factory=lambda: LabeledHistogram("op", STORE_BUCKETS_S)
    )
    registry: CollectorRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        # The process's CPU, memory and file descriptors, read from /proc at scrape time.
        ProcessCollector(namespace="enclave", registry=self.registry)

    def render(self) -> bytes:
        """The exposition text of every metric (Prometheus text format)."""
        return generate_latest(self.registry)

    def refused(self, reason: str) -> None:
        """Count a refused handshake (``reason``: one of :data:`REFUSAL_REASONS`)."""
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1

    def closed(self, code: int | None, reason: str | None) -> None:
        """Count a WebSocket connection's end: the close code the server started, if any.

        ``code`` None: the peer closed first or left (``peer``).
        """
        label = "peer" if code is None else str(code)
        self.closed_by_code[label] = self.closed_by_code.get(label, 0) + 1
        if reason == "slow_consumer":
            self.slow_consumer_closes += 1
        elif reason == "rate_limited":
            self.rate_limit_closes += 1


class _Collector:
    """Reads a :class:`Metrics` into metric families when the registry is collected."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield GaugeMetricFamily(
            "enclave_connections_open", "WebSocket connections open now", m.connections_open
        )
        yield _labeled(
            "enclave_connections_closed",
            "WebSocket connections ended, by the close code the server started ('peer': "
            "the peer closed first or left)",
            "code",
            m.closed_by_code,
        )
        yield _labeled(
            "enclave_handshakes_refused",
            "WebSocket handshakes refused, by reason",
            "reason",
            m.refused_by_reason,
        )
        yield CounterMetricFamily("enclave_runs_started", "runs started", m.runs_started)
        yield CounterMetricFamily(
            "enclave_runs_completed", "runs ended with agent_completed", m.runs_completed
        )
        yield _labeled(
            "enclave_runs_cancelled",
            "runs ended with run_cancelled, by reason",
            "reason",
            m.cancelled_by_reason,
        )
        yield _labeled(
            "enclave_runs_failed", "runs ended with agent_error, by code", "code", m.failed_by_code
        )
        yield _histogram(
            "enclave_turn_seconds",
            "user_message received to its run's terminal event queued, seconds",
            m.turn_seconds,
        )
        traffic = m.traffic
        yield _labeled(
            "enclave_frames",
            "WebSocket data messages received (in) and queued to send (out)",
            "direction",
            {"in": traffic.frames_in, "out": traffic.frames_out},
        )
        yield _labeled(
            "enclave_bytes",
            "bytes received (in) and sent (out) on WebSocket connections",
            "direction",
            {"in": traffic.bytes_in, "out": traffic.bytes_out},
        )
        yield CounterMetricFamily(
            "enclave_slow_consumer_closes",
            "connections closed 1008 slow_consumer",
            m.slow_consumer_closes,
        )
        yield CounterMetricFamily(
            "enclave_rate_limit_closes",
            "connections closed 1008 rate_limited",
            m.rate_limit_closes,
        )
        yield _histogram(
            "enclave_event_loop_lag_seconds",
            f"how late a {LAG_INTERVAL_S:g} s sleep in the server's nursery woke, seconds",
            m.loop_lag_seconds,
        )
        yield CounterMetricFamily(
            "enclave_isolation_violations",
            "frames or events refused for belonging to another connection (must stay 0)",
            m.isolation_violations,
        )
        store = HistogramMetricFamily(
            "enclave_store_seconds",
            "thread store operations, seconds, by operation",
            labels=[m.store_seconds.label],
        )
        for op, histogram in m.store_seconds.items():
            store.add_metric([op], histogram.cumulative(), histogram.sum)
        yield store


def _labeled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(), sum_value=histogram.sum)


async def watch_event_loop(
    metrics: Metrics,
    interval_s: float = LAG_INTERVAL_S,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sleep ``interval_s`` again and again, observing how late each sleep woke.

    A wake-up is late by the time the other tasks held the event loop (Trio runs one
    task at a time): a busy or blocked loop shows here first. Runs in the serve
    nursery until cancelled. Cancellation: stops; nothing to clean up.
    """
    task_status.started()
    while True:
        start = trio.current_time()
        await trio.sleep(interval_s)
        metrics.loop_lag_seconds.observe(max(0.0, trio.current_time() - start - interval_s))
