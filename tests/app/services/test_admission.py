from typing import Any

import trio

from app.services._admission import (
    AdmissionLimits,
    MemoryAdmission,
    Refusal,
    Refused,
    SubjectGuard,
    Ticket,
)
from app.services._settings import Settings


def test_burst_then_the_rate() -> None:
    guard = SubjectGuard(rate_per_s=2.0, burst=3, cooldown_s=10.0)
    assert [guard.admit("alice", 0.0) for _ in range(3)] == [None, None, None]
    assert guard.admit("alice", 0.0) == Refused(0.5, Refusal.TOO_FAST)
    assert guard.admit("alice", 0.25) == Refused(0.25, Refusal.TOO_FAST)
    assert guard.admit("alice", 0.5) is None  # one token back after 1 / rate seconds
    assert guard.admit("alice", 0.5) is not None


def test_a_budget_per_user() -> None:
    guard = SubjectGuard(rate_per_s=1.0, burst=1, cooldown_s=0.0)
    assert guard.admit("alice", 0.0) is None
    assert guard.admit("alice", 0.0) is not None
    assert guard.admit("bob", 0.0) is None


def test_refill_never_exceeds_the_burst() -> None:
    guard = SubjectGuard(rate_per_s=100.0, burst=2, cooldown_s=0.0)
    assert guard.admit("alice", 0.0) is None
    assert [guard.admit("alice", 1000.0) for _ in range(3)][2] is not None


def test_a_clock_going_backwards_refills_nothing() -> None:
    guard = SubjectGuard(rate_per_s=1.0, burst=1, cooldown_s=0.0)
    assert guard.admit("alice", 10.0) is None
    assert guard.admit("alice", 5.0) is not None


def test_penalty_refuses_until_the_cooldown_ends() -> None:
    guard = SubjectGuard(rate_per_s=1.0, burst=5, cooldown_s=10.0)
    guard.penalize("alice", 100.0)
    assert guard.admit("alice", 104.0) == Refused(6.0, Refusal.COOLING_DOWN)
    assert guard.admit("bob", 104.0) is None
    assert guard.admit("alice", 110.0) is None


def test_a_second_penalty_extends_and_never_shortens() -> None:
    guard = SubjectGuard(rate_per_s=1.0, burst=5, cooldown_s=10.0)
    guard.penalize("alice", 0.0)
    guard.penalize("alice", 5.0)
    refused = guard.admit("alice", 12.0)
    assert refused == Refused(3.0, Refusal.COOLING_DOWN)


def test_cooldown_without_a_connect_budget() -> None:
    guard = SubjectGuard(rate_per_s=0.0, burst=1, cooldown_s=5.0)
    assert all(guard.admit("alice", 0.0) is None for _ in range(100))
    assert len(guard) == 0  # nothing is remembered for users who were never limited
    guard.penalize("alice", 0.0)
    assert guard.admit("alice", 1.0) == Refused(4.0, Refusal.COOLING_DOWN)
    assert guard.admit("alice", 5.0) is None


def test_everything_off() -> None:
    guard = SubjectGuard(rate_per_s=0.0, burst=1, cooldown_s=0.0)
    guard.penalize("alice", 0.0)
    assert guard.admit("alice", 0.0) is None
    assert len(guard) == 0


def test_bounded_forgetting_the_least_recently_seen() -> None:
    guard = SubjectGuard(rate_per_s=1.0, burst=1, cooldown_s=60.0, max_subjects=3)
    guard.penalize("alice", 0.0)
    for user in ("bob", "carol"):
        assert guard.admit(user, 0.0) is None
    assert guard.admit("alice", 1.0) is not None  # alice is now the most recent
    assert guard.admit("dave", 1.0) is None  # bob, the least recent, is forgotten
    assert len(guard) == 3
    assert guard.admit("bob", 1.0) is None  # a fresh budget: forgetting only admits
    assert guard.admit("alice", 1.0) is not None  # still cooling down


# -- MemoryAdmission: the Admission of one process -----------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def memory(clock: Clock, **limits: Any) -> MemoryAdmission:
    return MemoryAdmission(AdmissionLimits(**limits), clock=clock)


async def test_everything_off_by_default() -> None:
    admission = MemoryAdmission()
    tickets = [await admission.admit("alice") for _ in range(100)]
    assert all(isinstance(t, Ticket) for t in tickets)
    admission.penalize("alice")
    assert isinstance(await admission.admit("alice"), Ticket)


async def test_at_most_max_open_per_user_until_one_is_released() -> None:
    admission = memory(Clock(), max_open=2, retry_after_s=7)
    first, second = await admission.admit("alice"), await admission.admit("alice")
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)
    assert await admission.admit("alice") == Refused(7, Refusal.TOO_MANY_OPEN)
    assert isinstance(await admission.admit("bob"), Ticket)  # a count per user
    await admission.release(first)
    assert admission.open_count("alice") == 1
    third = await admission.admit("alice")
    assert isinstance(third, Ticket)
    for ticket in (second, third):
        await admission.release(ticket)
    assert admission.open_count("alice") == 0
    assert admission._open == {"bob": 1}  # nothing kept for a user with none open


async def test_refused_for_too_many_open_takes_nothing_from_the_budget() -> None:
    clock = Clock()
    admission = memory(clock, connect_rate_per_s=1.0, connect_burst=2, max_open=1)
    held = await admission.admit("alice")
    assert isinstance(held, Ticket)
    for _ in range(5):
        refused = await admission.admit("alice")
        assert isinstance(refused, Refused)
        assert refused.reason is Refusal.TOO_MANY_OPEN
    await admission.release(held)
    assert isinstance(await admission.admit("alice"), Ticket)  # the burst's second token


async def test_the_order_is_cooldown_open_connections_budget() -> None:
    clock = Clock()
    admission = memory(
        clock, connect_rate_per_s=1.0, connect_burst=1, abuse_cooldown_s=10.0, max_open=1
    )
    assert isinstance(await admission.admit("alice"), Ticket)
    refused = await admission.admit("alice")
    assert isinstance(refused, Refused)
    assert refused.reason is Refusal.TOO_MANY_OPEN  # before the empty budget
    admission.penalize("alice")
    clock.now = 4.0
    assert await admission.admit("alice") == Refused(6.0, Refusal.COOLING_DOWN)
    clock.now = 10.0
    refused = await admission.admit("alice")
    assert isinstance(refused, Refused)
    assert refused.reason is Refusal.TOO_MANY_OPEN


async def test_a_cancelled_admit_counts_nothing() -> None:
    admission = memory(Clock(), max_open=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await admission.admit("alice")
    assert admission.open_count("alice") == 0
    assert isinstance(await admission.admit("alice"), Ticket)


async def test_release_in_a_cancelled_scope_still_releases() -> None:
    admission = memory(Clock(), max_open=1)
    ticket = await admission.admit("alice")
    assert isinstance(ticket, Ticket)
    with trio.CancelScope() as scope:
        scope.cancel()
        await admission.release(ticket)
    assert admission.open_count("alice") == 0


async def test_run_starts_and_stops_on_cancel() -> None:
    admission = MemoryAdmission()
    async with trio.open_nursery() as nursery:
        await nursery.start(admission.run)
        nursery.cancel_scope.cancel()


def test_limits_from_settings() -> None:
    settings = Settings(
        jwt_secret=b"x" * 32,
        connect_rate_per_s=2.0,
        connect_burst=3,
        abuse_cooldown_s=4.0,
        max_connections_per_user=5,
        retry_after_s=6,
    )
    assert AdmissionLimits.from_settings(settings) == AdmissionLimits(2.0, 3, 4.0, 5, 6)
    assert Settings(jwt_secret=b"x" * 32).max_connections_per_user == 32
