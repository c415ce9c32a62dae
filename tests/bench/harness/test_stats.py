"""Percentiles, summaries and medians."""

from __future__ import annotations

import pytest

from bench.harness._stats import median, percentile, summarize


def test_percentile_interpolates_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    # numpy.percentile([1, 2, 3, 4], 99) == 3.97
    assert percentile(values, 99) == pytest.approx(3.97)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 0) == percentile([7.0], 99.9) == 7.0


def test_percentile_p999_of_thousand_values() -> None:
    values = [float(i) for i in range(1, 1001)]
    assert percentile(values, 99.9) == pytest.approx(999.001)


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan")])
def test_percentile_rejects_q_outside_range(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summarize_sorts_and_summarizes() -> None:
    summary = summarize([3.0, 1.0, 2.0])
    assert summary is not None
    assert (summary.count, summary.p50, summary.max, summary.mean) == (3, 2.0, 3.0, 2.0)
    assert summary.as_dict()["p50"] == 2.0


def test_summarize_nothing_is_none() -> None:
    assert summarize([]) is None


def test_median() -> None:
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) is None
