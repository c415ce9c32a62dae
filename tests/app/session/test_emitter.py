import json
import logging
from collections.abc import Sequence

import attrs
import pytest
import trio

from app.core._codes import CancelReason, ErrorCode, RunErrorCode
from app.core._events import (
    AgentCompleted,
    AgentError,
    AgentStarted,
    AgentThinking,
    ErrorEvent,
    RunCancelled,
    RunPayload,
)
from app.core._state import ConnectionState, EventRefused, RunLimits, StartRun
from app.services._metrics import Metrics
from app.session._emitter import EventEmitter, InvalidEvent


@attrs.define
class Recorder:
    """The session's outbound path, recorded: (stamp, frame) per frame written."""

    written: list[tuple[str, bytes]] = attrs.Factory(list)
    gate: trio.Event | None = None

    flushes: int = 0

    def write(
        self, connection_id: str, frames: Sequence[bytes], deferred: bool, ticket: int
    ) -> bool:
        self.written += [(connection_id, frame) for frame in frames]
        return self.gate is not None  # a peer that does not read: the caller must flush

    async def flush(self) -> None:
        self.flushes += 1
        if self.gate is not None:
            await self.gate.wait()


def make() -> tuple[EventEmitter, ConnectionState, Recorder]:
    state = ConnectionState(RunLimits(), new_run_id=lambda: "run_1")
    recorder = Recorder()
    emitter = EventEmitter(
        "conn_a", state, recorder.write, logging.getLogger("test.emitter"), flush=recorder.flush
    )
    return emitter, state, recorder


def start(state: ConnectionState) -> str:
    [action] = state.receive_text('{"type":"user_message","text":"x"}', 0.0)
    assert isinstance(action, StartRun)
    return action.run_id


async def test_events_are_stamped_with_the_connection_and_encoded_once() -> None:
    emitter, state, recorder = make()
    await emitter.send_event(ErrorEvent(ErrorCode.INVALID_JSON, "bad"))
    run_id = start(state)
    await emitter.emit_run(run_id, AgentThinking("hmm é"))
    (first_stamp, _), (second_stamp, second) = recorder.written
    assert first_stamp == second_stamp == "conn_a"
    assert b'"seq":1' in second
    assert "hmm é".encode() in second


async def test_foreign_run_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    emitter, _, recorder = make()
    with pytest.raises(EventRefused):
        await emitter.emit_run("run_of_another_user", AgentThinking("leak"))
    assert "isolation violation" in caplog.text
    assert recorder.written == []


async def test_non_json_payload_uses_no_sequence_number() -> None:
    emitter, state, recorder = make()
    run_id = start(state)
    with pytest.raises(InvalidEvent):
        await emitter.emit_run(run_id, AgentCompleted({1, 2}))
    await emitter.emit_run(run_id, AgentThinking("ok"))
    [(_, frame)] = recorder.written
    assert b'"seq":1' in frame


async def test_a_cancelled_emit_keeps_its_frame_and_its_number() -> None:
    # The transport keeps a cancelled sender's frames queued: they go out, numbered.
    emitter, state, recorder = make()
    recorder.gate = trio.Event()
    run_id = start(state)
    with trio.move_on_after(0.01):
        await emitter.emit_run(run_id, AgentThinking("blocked"))
    assert len(recorder.written) == 1
    assert recorder.flushes == 1
    assert state.next_event(run_id, AgentThinking("next"))[1] == 2


async def test_unencodable_text_is_invalid_and_nothing_is_written() -> None:
    emitter, state, recorder = make()
    run_id = start(state)
    with pytest.raises(InvalidEvent):
        await emitter.emit_run(run_id, AgentThinking("\ud800"))
    assert recorder.written == []
    assert state.next_event(run_id, AgentThinking("next"))[1] == 1


async def test_events_of_a_run_are_numbered_in_order() -> None:
    emitter, state, recorder = make()
    run_id = start(state)
    await emitter.emit_run(run_id, AgentThinking("one"))
    await emitter.emit_run(run_id, AgentThinking("two"))
    assert [b'"seq":1' in f for _, f in recorder.written] == [True, False]
    assert b'"seq":2' in recorder.written[1][1]


# -- what the emitter counts -----------------------------------------------------------


def start_run(state: ConnectionState, n: int) -> str:
    [action] = state.receive_text(f'{{"type":"user_message","text":"x{n}"}}', 0.0)
    assert isinstance(action, StartRun)
    return action.run_id


async def test_runs_are_counted_by_how_they_end_and_each_turn_is_timed() -> None:
    state = ConnectionState(
        RunLimits(max_runs=8), new_run_id=iter(["r1", "r2", "r3", "r4"]).__next__
    )
    metrics = Metrics()
    emitter = EventEmitter(
        "conn_a", state, Recorder().write, logging.getLogger("t"), metrics=metrics
    )
    ends: list[RunPayload] = [
        AgentCompleted({"ok": True}),
        RunCancelled(CancelReason.CANCELLED_BY_CLIENT),
        AgentError(RunErrorCode.RUN_TIMEOUT, "slow"),
        AgentError(RunErrorCode.RUN_TIMEOUT, "slow"),
    ]
    for n, end in enumerate(ends):
        run_id = start_run(state, n)
        emitter.run_received(run_id)
        await emitter.emit_run(run_id, AgentStarted(agent="echo"))
        await emitter.emit_run(run_id, AgentThinking("hmm"))
        await trio.sleep(0.02)  # the turn's time is real time
        await emitter.emit_run(run_id, end)
    assert metrics.runs_started == 4
    assert metrics.runs_completed == 1
    assert metrics.cancelled_by_reason["cancelled_by_client"] == 1
    assert metrics.failed_by_code["run_timeout"] == 2
    assert metrics.turn_seconds.count == 4
    assert 4 * 0.02 <= metrics.turn_seconds.sum < 4.0


async def test_a_turn_without_a_receive_time_is_timed_from_agent_started() -> None:
    emitter, state, _ = make()
    run_id = start(state)
    await emitter.emit_run(run_id, AgentStarted(agent="echo"))
    await emitter.emit_run(run_id, AgentCompleted(None))
    assert emitter.metrics.turn_seconds.count == 1
    assert emitter.metrics.turn_seconds.sum < 1.0


async def test_an_isolation_violation_is_counted() -> None:
    emitter, _, _ = make()
    with pytest.raises(EventRefused):
        await emitter.emit_run("run_of_another_user", AgentThinking("leak"))
    assert emitter.metrics.isolation_violations == 1


async def test_the_violation_log_names_the_connection_and_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter, _, _ = make()
    with pytest.raises(EventRefused):
        await emitter.emit_run("run_x", AgentThinking("leak"))
    [record] = caplog.records
    assert (getattr(record, "connection_id", None), getattr(record, "run_id", None)) == (
        "conn_a",
        "run_x",
    )


async def test_queue_run_queues_without_flushing_and_says_whether_to() -> None:
    emitter, state, recorder = make()
    run_id = start(state)
    assert emitter.queue_run(run_id, AgentThinking("one"), deferred=True) is False
    recorder.gate = trio.Event()  # the peer stopped reading: the write asks for a flush
    assert emitter.queue_run(run_id, AgentThinking("two"), deferred=True) is True
    assert recorder.flushes == 0  # the caller flushes, not queue_run
    assert [json.loads(frame)["seq"] for _, frame in recorder.written] == [1, 2]
