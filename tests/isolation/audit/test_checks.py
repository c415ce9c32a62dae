"""The IDOR helpers of the checks across users."""

from __future__ import annotations

import random

from isolation.audit._checks import lookalike_id


def test_a_lookalike_id_keeps_the_shape() -> None:
    bogus = lookalike_id("run_Ab3-x_9Z", random.Random(1))
    assert bogus.startswith("run_")
    assert len(bogus) == len("run_Ab3-x_9Z")
    assert bogus != "run_Ab3-x_9Z"
    assert [c.isdigit() for c in bogus] == [c.isdigit() for c in "run_Ab3-x_9Z"]
