"""Percentiles, latency summaries and medians: pure functions, no I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["LatencySummary", "median", "percentile", "summarize"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated.

    The same definition as NumPy's default (``method="linear"``). Raises ValueError for
    an empty sequence or ``q`` outside 0-100.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"q must be within 0..100, not {q!r}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


@attrs.frozen
class LatencySummary:
    """Latencies in milliseconds."""

    count: int
    p50: float
    p99: float
    p999: float
    mean: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def summarize(values_ms: Iterable[float]) -> LatencySummary | None:
    """p50/p99/p99.9/mean/max of latencies in ms; None when there are none."""
    ordered = sorted(values_ms)
    if not ordered:
        return None
    return LatencySummary(
        count=len(ordered),
        p50=percentile(ordered, 50.0),
        p99=percentile(ordered, 99.0),
        p999=percentile(ordered, 99.9),
        mean=statistics.fmean(ordered),
        max=ordered[-1],
    )


def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values."""
    items = list(values)
    return statistics.median(items) if items else None
