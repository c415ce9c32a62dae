import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core._codes import CloseCode
from app.core._events import (
    AgentCompleted,
    AgentError,
    AgentStarted,
    AuthOk,
    ConnectionReady,
    ErrorEvent,
    Pong,
    RunCancelled,
    RunEvent,
    ToolExecuting,
    dump_json,
    encode_json,
    serialize,
    to_wire,
)


def test_run_event_carries_run_fields() -> None:
    event = RunEvent("run_1", "thr_1", 3, ToolExecuting("word_count", {"text": "hi"}))
    assert to_wire(event) == {
        "type": "tool_executing",
        "tool_name": "word_count",
        "tool_input": {"text": "hi"},
        "run_id": "run_1",
        "thread_id": "thr_1",
        "seq": 3,
    }
    assert not event.terminal


def test_agent_error_nests_error() -> None:
    event = RunEvent("r", "t", 2, AgentError("agent_failed", "the agent failed"))
    assert to_wire(event)["error"] == {"code": "agent_failed", "message": "the agent failed"}
    assert event.terminal


def test_optional_fields_are_omitted() -> None:
    assert to_wire(RunEvent("r", "t", 1, AgentStarted("echo"))) == {
        "type": "agent_started",
        "agent": "echo",
        "run_id": "r",
        "thread_id": "t",
        "seq": 1,
    }
    assert to_wire(ErrorEvent("invalid_json", "bad")) == {
        "type": "error",
        "code": "invalid_json",
        "message": "bad",
    }
    assert to_wire(ErrorEvent("invalid_message", "m", "c1", "text"))["field"] == "text"


def test_connection_level_events() -> None:
    ready = to_wire(ConnectionReady("conn_1", "alice", {"max_runs": 4}))
    assert ready == {
        "type": "connection_ready",
        "connection_id": "conn_1",
        "user_id": "alice",
        "limits": {"max_runs": 4},
        "protocol": "chat.v1",
    }
    assert to_wire(Pong()) == {"type": "pong"}
    assert to_wire(AuthOk(12.0)) == {"type": "auth_ok", "expires_at": 12.0}


def test_serialize_is_compact_unicode_json() -> None:
    text = serialize(RunEvent("r", "t", 5, AgentCompleted({"text": "héllo"})))
    assert " " not in text.replace("héllo", "")
    assert json.loads(text)["result"] == {"text": "héllo"}
    assert "héllo" in text


@pytest.mark.parametrize("bad", [{1, 2}, float("nan"), object()])
def test_serialize_refuses_non_json(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        serialize(RunEvent("r", "t", 1, AgentCompleted(bad)))


def test_terminal_payloads() -> None:
    assert RunEvent("r", "t", 1, RunCancelled("x")).terminal
    assert RunEvent("r", "t", 1, AgentCompleted(None)).terminal


@pytest.mark.parametrize(
    "value",
    [
        {"text": 'héllo \u2028 "q"', "n": [1, 2.5, -0.0, None, True, False], "e": {}},
        "a string",
        [],
        12,
        1e300,
    ],
)
def test_encode_json_is_json_dumps_compact_unicode_strict(value: object) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert encode_json(value) == expected


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -float("inf")}])
def test_encode_json_refuses_non_finite_floats(value: object) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encode_json(value)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


def _has_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    return False


@pytest.mark.parametrize(
    "value",
    [
        {"text": 'héllo \u2028 "q" \\ \x00\x1f\x7f \t\n', "n": [1, -2, None, True, False], "e": {}},
        {"null": "null", "nested": [[{"a": []}]]},
        "a string",
        [],
        2**63 - 1,
        2**64,  # past orjson's integers: the standard encoder writes it
        {1: "a key that is not a string"},
        {"enum": CloseCode.NORMAL},  # an int subclass: written by value, as json does
    ],
)
def test_dump_json_is_the_encoded_text_of_encode_json(value: object) -> None:
    assert dump_json(value) == encode_json(value).encode()


@given(st.recursive(_scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_dump_json_agrees_with_encode_json_on_any_json_value(value: object) -> None:
    assert json.loads(dump_json(value)) == json.loads(encode_json(value))
    if not _has_float(value):
        assert dump_json(value) == encode_json(value).encode()


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -float("inf")}])
def test_dump_json_refuses_non_finite_floats(value: object) -> None:
    # orjson writes them as null: the null makes the standard encoder judge.
    with pytest.raises(ValueError, match="Out of range float"):
        dump_json(value)


@pytest.mark.parametrize("bad", [{1, 2}, object(), {"when": datetime.datetime(2026, 1, 1)}])
def test_dump_json_refuses_what_is_not_json(bad: object) -> None:
    with pytest.raises(TypeError):
        dump_json(bad)


def test_dump_json_refuses_a_lone_surrogate_as_the_encoding_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        dump_json({"text": "\ud800"})


def test_encode_json_refuses_a_cycle_and_still_encodes_after_it() -> None:
    # No circular-reference markers survive a failed call: the next one is unaffected.
    looped: dict[str, object] = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="circular"):
        encode_json(looped)
    with pytest.raises(TypeError):
        encode_json({"x": object()})
    assert encode_json({"inner": {"a": [1]}}) == '{"inner":{"a":[1]}}'
