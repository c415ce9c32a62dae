import gc
import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from app.server._gc import SERVING_THRESHOLDS, collect_periodically, tune_gc_for_serving


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_serving_freezes_start_up_and_raises_the_thresholds() -> None:
    assert gc.get_freeze_count() == 0
    tune_gc_for_serving()
    assert gc.get_threshold() == SERVING_THRESHOLDS
    assert gc.get_freeze_count() > 0
    # Everything alive at start-up was moved out of the generations that are collected.
    assert sum(gc.get_count()) < SERVING_THRESHOLDS[0]


async def test_a_full_collection_every_interval_until_cancelled(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def collect(generation: int = 2) -> int:
        calls.append(trio.current_time())
        return 7

    monkeypatch.setattr(gc, "collect", collect)
    start = trio.current_time()
    with caplog.at_level(logging.DEBUG, logger="t"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_periodically, 10.0, logging.getLogger("t"))
            await trio.sleep(35.0)
            nursery.cancel_scope.cancel()
    assert [round(t - start) for t in calls] == [10, 20, 30]
    assert "full garbage collection: 7 objects freed" in caplog.text
