import gc
from collections.abc import Iterator

import pytest

from app._gc import SERVING_THRESHOLDS, tune_gc_for_serving


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
