"""How the users of one measurement are shared over the load-generator processes."""

from __future__ import annotations

from bench.load._pool import split_users


def test_split_users_over_processes() -> None:
    assert split_users(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert split_users(2, 4) == [(0, 1), (1, 1)]
    assert split_users(5, 1) == [(0, 5)]
