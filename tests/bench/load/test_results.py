"""Result values cross process boundaries as JSON and merge across client processes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.harness._stats import summarize
from bench.load._results import LoadResult, Measurement, merge_load_results


def _result(users: int, turns: int, **kw: Any) -> LoadResult:
    return LoadResult(
        users=users,
        connected=users,
        connect_ms=(1.0,) * users,
        turn_ms=(2.0,) * turns,
        turns=turns,
        window_s=3.0,
        frames_rx=turns * 5,
        frames_tx=turns,
        cpu_s=0.5,
        **kw,
    )


def test_load_result_round_trips_through_json() -> None:
    result = _result(3, 4, errors={"http_401": 1}, violations=1, violation_samples=("x",))
    again = LoadResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert again == result


def test_merge_adds_counts_and_keeps_every_sample() -> None:
    a = _result(2, 3, errors={"dropped": 1}, close_codes={"1011": 1})
    b = _result(3, 5, errors={"dropped": 2, "turn_timeout": 1})
    merged = merge_load_results([a, b])
    assert (merged.users, merged.turns, merged.frames_rx) == (5, 8, 40)
    assert len(merged.turn_ms) == 8
    assert dict(merged.errors) == {"dropped": 3, "turn_timeout": 1}
    assert dict(merged.close_codes) == {"1011": 1}
    assert merged.cpu_s == 1.0


def test_a_measurement_says_its_think_time() -> None:
    with pytest.raises(TypeError, match="think_ms"):
        Measurement("fastapi", 100, 1, "ok")  # type: ignore[call-arg]


def test_a_measurement_is_plain_json() -> None:
    m = Measurement(
        "fastapi", 100, 1, "ok", think_ms=0.0, turns=10, turn=summarize([1.0, 2.0]), errors={"x": 1}
    )
    saved = json.loads(json.dumps(m.as_dict()))
    assert (saved["server"], saved["turns"], saved["errors"]) == ("fastapi", 10, {"x": 1})
    assert (saved["users"], saved["think_ms"]) == (100, 0.0)  # its cell of the run
    assert saved["turn"]["count"] == 2
    assert m.valid
    assert m.error_count == 1
