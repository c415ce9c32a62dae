from app.services._admission import Refusal, Refused, SubjectGuard


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
