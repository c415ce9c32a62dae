import itertools
import json

import pytest

from app.core._codes import CancelReason, CloseCode, CloseReason, ErrorCode
from app.core._events import (
    TERMINAL_PAYLOADS,
    AgentCompleted,
    AgentThinking,
    ErrorEvent,
    Pong,
    RunCancelled,
)
from app.core._messages import UserMessage
from app.core._state import (
    CancelElsewhere,
    Close,
    ConnectionState,
    EventRefused,
    Reauthenticate,
    Reply,
    RunLimits,
    StartRun,
    StopRun,
    TokenBucket,
)


def make_state(**limits: float) -> ConnectionState:
    counter = itertools.count(1)
    return ConnectionState(
        RunLimits(**limits),  # type: ignore[arg-type]
        new_run_id=lambda: f"run_{next(counter)}",
        new_thread_id=lambda: "thr_auto",
    )


def send(state: ConnectionState, obj: object, now: float = 0.0) -> list[object]:
    return list(state.receive_text(json.dumps(obj), now))


def start(state: ConnectionState, text: str = "hi", **extra: str) -> StartRun:
    [action] = send(state, {"type": "user_message", "text": text, **extra})
    assert isinstance(action, StartRun), action
    return action


def error_code(actions: list[object]) -> str:
    [action] = actions
    assert isinstance(action, Reply)
    assert isinstance(action.event, ErrorEvent)
    return action.event.code


def test_user_message_starts_a_run_with_generated_thread() -> None:
    state = make_state()
    action = start(state, client_id="c1")
    assert action == StartRun("run_1", "thr_auto", UserMessage("hi", None, "c1"))
    assert state.active_runs == {"run_1"}


def test_given_thread_is_kept() -> None:
    assert start(make_state(), thread_id="t-9").thread_id == "t-9"


def test_ping_gets_pong_and_auth_asks_for_reauthentication() -> None:
    state = make_state()
    assert send(state, {"type": "ping"}) == [Reply(Pong())]
    assert send(state, {"type": "auth", "token": "tok"}) == [Reauthenticate("tok")]


def test_protocol_errors_become_error_replies() -> None:
    [action] = make_state().receive_text("{", 0.0)
    assert isinstance(action, Reply)
    assert isinstance(action.event, ErrorEvent)
    assert action.event.code == ErrorCode.INVALID_JSON


def test_too_many_runs() -> None:
    state = make_state(max_runs=2)
    start(state)
    start(state)
    actions = send(state, {"type": "user_message", "text": "x", "client_id": "c3"})
    assert error_code(actions) == ErrorCode.TOO_MANY_RUNS
    assert actions[0].event.ref == "c3"  # type: ignore[attr-defined]


def test_finished_runs_free_their_slot() -> None:
    state = make_state(max_runs=1)
    run = start(state)
    done = AgentCompleted({"ok": True})
    state.advance(run.run_id, state.next_event(run.run_id, done)[1], done)
    start(state)


def test_cancel_own_run_then_unknown() -> None:
    state = make_state()
    run = start(state)
    handle = object()
    state.attach(run.run_id, handle)
    [stop] = send(state, {"type": "cancel", "run_id": run.run_id})
    assert isinstance(stop, StopRun)
    assert (stop.run_id, stop.handle) == (run.run_id, handle)
    assert state.cancel_reason(run.run_id) == "cancelled_by_client"
    # A second cancel of the same run is not acted on twice.
    assert error_code(send(state, {"type": "cancel", "run_id": run.run_id})) == "run_not_found"


def test_the_drain_stops_every_run_once_with_its_reason() -> None:
    state = make_state(max_runs=3)
    state.new_run_id = iter(["run_a", "run_b", "run_c"]).__next__
    a, b, c = start(state), start(state), start(state)
    for run in (a, b, c):
        state.attach(run.run_id, run.run_id.upper())
    send(state, {"type": "cancel", "run_id": b.run_id})
    state.begin_drain()
    stops = state.cancel_all(CancelReason.SERVER_SHUTDOWN)
    assert [(s.run_id, s.handle) for s in stops] == [("run_a", "RUN_A"), ("run_c", "RUN_C")]
    assert state.cancel_reason("run_b") == "cancelled_by_client"  # the first reason wins
    assert state.cancel_reason("run_c") == "server_shutdown"
    assert state.cancel_all(CancelReason.SERVER_SHUTDOWN) == []


def test_a_discarded_run_is_gone() -> None:
    state = make_state()
    run = start(state)
    assert state.has_runs
    state.discard(run.run_id)
    state.discard(run.run_id)  # idempotent
    assert not state.has_runs
    assert state.cancel_reason(run.run_id) is None


def test_foreign_and_missing_run_ids_get_identical_answers() -> None:
    alice, bob = make_state(), make_state()
    alice_run = start(alice)
    bob.new_run_id = lambda: "run_other"
    [foreign] = send(bob, {"type": "cancel", "run_id": alice_run.run_id})
    [missing] = send(bob, {"type": "cancel", "run_id": "run_never"})
    # Both go to the session's search of the user's own followed threads: the same way.
    assert foreign == CancelElsewhere(alice_run.run_id)
    assert missing == CancelElsewhere("run_never")
    assert alice.active_runs == {alice_run.run_id}


def test_draining_refuses_new_runs() -> None:
    state = make_state()
    assert not state.draining
    state.begin_drain()
    assert state.draining
    assert error_code(send(state, {"type": "user_message", "text": "x"})) == "shutting_down"


def test_sequence_numbers_and_terminal() -> None:
    state = make_state()
    run = start(state)
    thread_id, seq = state.next_event(run.run_id, AgentThinking("a"))
    assert seq == 1
    # Nothing changes until advance: asking again gives the same number.
    assert state.next_event(run.run_id, AgentThinking("a"))[1] == 1
    state.advance(run.run_id, seq, AgentThinking("a"))
    cancelled = RunCancelled("x")
    thread_id, seq = state.next_event(run.run_id, cancelled)
    assert (seq, thread_id, isinstance(cancelled, TERMINAL_PAYLOADS)) == (2, "thr_auto", True)
    state.advance(run.run_id, seq, cancelled)
    assert state.active_runs == frozenset()
    with pytest.raises(EventRefused):
        state.next_event(run.run_id, AgentThinking("late"))


def test_unknown_run_and_out_of_sequence_are_refused() -> None:
    state = make_state()
    with pytest.raises(EventRefused):
        state.next_event("run_someone_else", AgentThinking("x"))
    run = start(state)
    _, seq = state.next_event(run.run_id, AgentThinking("x"))
    state.advance(run.run_id, seq, AgentThinking("x"))
    with pytest.raises(EventRefused):
        state.advance(run.run_id, seq, AgentThinking("x"))


def test_message_too_big_closes_1009() -> None:
    state = make_state(max_message_bytes=100)
    assert state.receive_text("x" * 101, 0.0) == [
        Close(CloseCode.MESSAGE_TOO_BIG, CloseReason.MESSAGE_TOO_BIG)
    ]
    # Counted in UTF-8 bytes, not characters.
    assert state.receive_text("é" * 51, 0.0)[0] == Close(
        CloseCode.MESSAGE_TOO_BIG, CloseReason.MESSAGE_TOO_BIG
    )
    assert isinstance(state.receive_text("é" * 40, 0.0)[0], Reply)


def test_rate_limit_then_abuse_close() -> None:
    state = make_state(rate_per_s=1, rate_burst=2, rate_abuse_limit=3)
    ping = {"type": "ping"}
    assert send(state, ping) == [Reply(Pong())]
    assert send(state, ping) == [Reply(Pong())]
    assert error_code(send(state, ping)) == "rate_limited"
    assert error_code(send(state, ping)) == "rate_limited"
    assert send(state, ping) == [Close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED)]


def test_rate_limit_recovers_with_time_and_resets_abuse_count() -> None:
    state = make_state(rate_per_s=1, rate_burst=2, rate_abuse_limit=2)
    ping = {"type": "ping"}
    assert send(state, ping, now=0.0) == [Reply(Pong())]
    assert send(state, ping, now=0.0) == [Reply(Pong())]
    assert error_code(send(state, ping, now=0.1)) == "rate_limited"
    # The bucket refilled: a frame with a token to spare ends the streak.
    assert send(state, ping, now=2.5) == [Reply(Pong())]
    assert send(state, ping, now=2.5) == [Reply(Pong())]
    assert error_code(send(state, ping, now=2.6)) == "rate_limited"


def test_a_flood_let_through_once_per_refill_is_still_closed() -> None:
    # However slowly the server reads a flood, one frame per refill gets through; those
    # frames leave the bucket empty and do not reset the count.
    state = make_state(rate_per_s=10, rate_burst=1, rate_abuse_limit=3)
    ping = {"type": "ping"}
    assert send(state, ping, now=0.0) == [Reply(Pong())]
    assert error_code(send(state, ping, now=0.01)) == "rate_limited"
    assert send(state, ping, now=0.1) == [Reply(Pong())]
    assert error_code(send(state, ping, now=0.11)) == "rate_limited"
    assert send(state, ping, now=0.2) == [Reply(Pong())]
    closed = send(state, ping, now=0.21)
    assert closed == [Close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED)]


def test_token_bucket_refills_up_to_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    # A clock that goes backwards never mints tokens.
    assert not bucket.take(50.0)


def test_rate_limited_error_names_the_dropped_message() -> None:
    state = make_state(rate_per_s=1, rate_burst=1)
    start(state)

    def ref_of(obj: object) -> str | None:
        [action] = send(state, obj)
        assert isinstance(action, Reply)
        assert isinstance(action.event, ErrorEvent)
        assert action.event.code == "rate_limited"
        return action.event.ref

    assert ref_of({"type": "user_message", "text": "x", "client_id": "c2"}) == "c2"
    assert ref_of({"type": "cancel", "run_id": "run_9"}) == "run_9"
    assert ref_of({"type": "ping"}) is None
    assert ref_of({"type": "nope", "client_id": "c3"}) == "c3"


def test_default_ids_are_unique_per_connection_and_unrelated_across_connections() -> None:
    ours, theirs = ConnectionState(RunLimits()), ConnectionState(RunLimits())
    message = {"type": "user_message", "text": "hi"}
    starts = [action for _ in range(3) for action in send(ours, message)]
    other = send(theirs, message)[0]
    assert all(isinstance(start, StartRun) for start in [*starts, other])
    run_ids = [start.run_id for start in starts if isinstance(start, StartRun)]
    thread_ids = [start.thread_id for start in starts if isinstance(start, StartRun)]
    assert len(set(run_ids)) == 3
    assert len(set(thread_ids)) == 3
    assert all(run_id.startswith("run_") for run_id in run_ids)
    assert all(thread_id.startswith("thr_") for thread_id in thread_ids)
    # Ids of one connection share its random part; another connection's do not.
    ours_part = run_ids[0][4:20]
    assert len(ours_part) == 16
    assert all(run_id[4:20] == ours_part for run_id in run_ids)
    assert isinstance(other, StartRun)
    assert other.run_id[4:20] != ours_part
