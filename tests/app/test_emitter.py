import logging

import pytest
import trio

from app._codes import ErrorCode
from app._emitter import EventEmitter, Flush, InvalidEvent, Outbound
from app._events import AgentCompleted, AgentThinking, ErrorEvent
from app._state import ConnectionState, EventRefused, RunLimits, StartRun


def make() -> tuple[EventEmitter, ConnectionState, trio.MemoryReceiveChannel[Outbound | Flush]]:
    state = ConnectionState(RunLimits(), new_run_id=lambda: "run_1")
    send, receive = trio.open_memory_channel[Outbound | Flush](10)
    return EventEmitter("conn_a", state, send, logging.getLogger("test.emitter")), state, receive


def start(state: ConnectionState) -> str:
    [action] = state.receive_text('{"type":"user_message","text":"x"}', 0.0)
    assert isinstance(action, StartRun)
    return action.run_id


async def test_events_are_stamped_with_the_connection() -> None:
    emitter, state, receive = make()
    await emitter.send_event(ErrorEvent(ErrorCode.INVALID_JSON, "bad"))
    run_id = start(state)
    await emitter.emit_run(run_id, AgentThinking("hmm"))
    first, second = receive.receive_nowait(), receive.receive_nowait()
    assert isinstance(first, Outbound)
    assert isinstance(second, Outbound)
    assert first.connection_id == second.connection_id == "conn_a"
    assert '"seq":1' in second.text


async def test_foreign_run_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    emitter, _, receive = make()
    with pytest.raises(EventRefused):
        await emitter.emit_run("run_of_another_user", AgentThinking("leak"))
    assert "isolation violation" in caplog.text
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_non_json_payload_uses_no_sequence_number() -> None:
    emitter, state, receive = make()
    run_id = start(state)
    with pytest.raises(InvalidEvent):
        await emitter.emit_run(run_id, AgentCompleted({1, 2}))
    await emitter.emit_run(run_id, AgentThinking("ok"))
    item = receive.receive_nowait()
    assert isinstance(item, Outbound)
    assert '"seq":1' in item.text


async def test_cancelled_emit_uses_no_sequence_number() -> None:
    state = ConnectionState(RunLimits(), new_run_id=lambda: "run_1")
    send, receive = trio.open_memory_channel[Outbound | Flush](0)
    emitter = EventEmitter("conn_a", state, send, logging.getLogger("test.emitter"))
    run_id = start(state)
    with trio.move_on_after(0.01):
        await emitter.emit_run(run_id, AgentThinking("blocked"))
    assert state.prepare(run_id, AgentThinking("next")).seq == 1
    del receive


async def test_flush_waits_for_the_sender() -> None:
    emitter, _, receive = make()
    done = trio.Event()

    async def flush() -> None:
        await emitter.flush()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        marker = await receive.receive()
        assert isinstance(marker, Flush)
        assert not done.is_set()
        marker.done.set()
    assert done.is_set()


async def test_unencodable_text_is_invalid() -> None:
    emitter, state, _ = make()
    run_id = start(state)
    with pytest.raises(InvalidEvent):
        await emitter.emit_run(run_id, AgentThinking("\ud800"))


async def test_emit_nowait_queues_at_once_and_numbers_in_order() -> None:
    emitter, state, receive = make()
    run_id = start(state)
    assert emitter.emit_run_nowait(run_id, AgentThinking("one"))
    await emitter.emit_run(run_id, AgentThinking("two"))
    first, second = receive.receive_nowait(), receive.receive_nowait()
    assert isinstance(first, Outbound)
    assert isinstance(second, Outbound)
    assert '"seq":1' in first.text
    assert '"seq":2' in second.text


async def test_emit_nowait_on_a_full_queue_uses_nothing() -> None:
    state = ConnectionState(RunLimits(), new_run_id=lambda: "run_1")
    send, receive = trio.open_memory_channel[Outbound | Flush](1)
    emitter = EventEmitter("conn_a", state, send, logging.getLogger("test.emitter"))
    run_id = start(state)
    assert emitter.emit_run_nowait(run_id, AgentThinking("fits"))
    assert not emitter.emit_run_nowait(run_id, AgentThinking("no room"))
    assert state.prepare(run_id, AgentThinking("next")).seq == 2
    receive.receive_nowait()
    assert emitter.emit_run_nowait(run_id, AgentThinking("room again"))
    item = receive.receive_nowait()
    assert isinstance(item, Outbound)
    assert '"seq":2' in item.text


async def test_emit_nowait_refuses_like_emit(caplog: pytest.LogCaptureFixture) -> None:
    emitter, state, _ = make()
    with pytest.raises(EventRefused):
        emitter.emit_run_nowait("run_of_another_user", AgentThinking("leak"))
    assert "isolation violation" in caplog.text
    run_id = start(state)
    with pytest.raises(InvalidEvent):
        emitter.emit_run_nowait(run_id, AgentCompleted({1, 2}))
