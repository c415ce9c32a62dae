"""The chat.v1 JSON Schema against the code: events, the parser, the state machine, a session.

The schema (``app/schemas/chat.v1.json``) is for client authors; ``_messages.py`` and
``_events.py`` are what the server runs. These tests keep them from drifting apart:
every event the server can build conforms, and the parser accepts a message exactly
when the schema does.
"""

from __future__ import annotations

import json
import logging
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import example, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError  # type: ignore[import-untyped]

from app.agents._agent import EchoAgent, Emit, RunContext
from app.auth._context import UserContext
from app.auth._tokens import AuthConfig, TokenVerifier, mint_token
from app.core._codes import PROTOCOL, ErrorCode
from app.core._events import (
    AgentCompleted,
    AgentDelta,
    AgentError,
    AgentStarted,
    AgentThinking,
    AuthOk,
    ConnectionReady,
    DuplicateMessage,
    ErrorEvent,
    HistoryPage,
    MessageAccepted,
    Pong,
    Resumed,
    RunCancelled,
    RunEvent,
    RunPayload,
    ServerEvent,
    ThreadList,
    ToolCompleted,
    ToolExecuting,
    serialize,
)
from app.core._messages import (
    CLIENT_TYPES,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_THREADS_LIMIT,
    ID_PATTERN,
    MAX_PAGE,
    MAX_SEQ,
    MAX_TEXT_CHARS,
    MAX_TOKEN_CHARS,
    Authenticate,
    CancelRun,
    ClientMessage,
    HistoryRequest,
    Ping,
    ProtocolError,
    ResumeRequest,
    ThreadsRequest,
    UserMessage,
    parse_client_message,
)
from app.core._state import ConnectionState, Reply, RunLimits
from app.services._services import ServerLifecycle, Services
from app.services._settings import Settings
from app.session._session import run_session
from app.testing._memory import PeerClosed, memory_transport_pair
from app.testing._schema import (
    load_schema,
    validate,
    validate_client_message,
    validate_server_event,
    validator,
)

SCHEMA = load_schema()
DEFS: Mapping[str, Any] = SCHEMA["$defs"]

#: Definitions that are not one message or event.
HELPER_DEFS = frozenset({"client_message", "server_event", "id"})

#: Run payloads and connection-level events, as the event module declares them.
RUN_PAYLOADS: tuple[type[Any], ...] = typing.get_args(RunPayload)
CONNECTION_EVENTS: tuple[type[Any], ...] = tuple(
    cls for cls in typing.get_args(ServerEvent) if cls is not RunEvent
)
SERVER_TYPES = frozenset(cls.TYPE for cls in RUN_PAYLOADS + CONNECTION_EVENTS)

#: Values the session writes as bare strings (``_session.py``), not enums.
AGENT_ERROR_CODES = (
    "agent_failed",
    "run_timeout",
    "invalid_event",
    "invalid_result",
    # raised by agents as AgentFailure (--agent openai)
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_status",
    "upstream_invalid",
    "too_many_tool_rounds",
)
CANCEL_REASONS = ("cancelled_by_client", "server_shutdown", "client_gone", "interrupted")

MESSAGE_TYPE: Mapping[type[Any], str] = {
    UserMessage: "user_message",
    CancelRun: "cancel",
    Ping: "ping",
    Authenticate: "auth",
    HistoryRequest: "history",
    ThreadsRequest: "threads",
    ResumeRequest: "resume",
}


#: The ``limit`` a message without one gets.
DEFAULTS: Mapping[str, int] = {"history": DEFAULT_HISTORY_LIMIT, "threads": DEFAULT_THREADS_LIMIT}

#: One validator per definition, built once (``validate`` builds one per call).
VALIDATORS: Mapping[str, Any] = {name: validator(name) for name in DEFS}


def is_valid(obj: Any, definition: str) -> bool:
    verdict: bool = VALIDATORS[definition].is_valid(obj)
    return verdict


def wire(event: ServerEvent) -> dict[str, Any]:
    """The event as a client receives it: the serialized frame, parsed."""
    data: dict[str, Any] = json.loads(serialize(event))
    return data


# -- the document ------------------------------------------------------------


def test_schema_is_a_valid_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_schema_ships_with_the_package() -> None:
    root = Path(__file__).resolve().parents[3]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "*.json" in pyproject["tool"]["setuptools"]["package-data"]["app.schemas"]
    assert (root / "app" / "schemas" / "chat.v1.json").is_file()


def test_load_schema_returns_a_fresh_copy() -> None:
    first = load_schema()
    assert isinstance(first, dict)
    first["$defs"].clear()
    assert load_schema()["$defs"]


def message_defs() -> dict[str, Mapping[str, Any]]:
    return {name: d for name, d in DEFS.items() if name not in HELPER_DEFS}


def union_members(union: str) -> list[str]:
    return [entry["$ref"].removeprefix("#/$defs/") for entry in DEFS[union]["oneOf"]]


def test_every_message_and_event_has_a_definition() -> None:
    assert set(union_members("client_message")) == set(CLIENT_TYPES)
    assert set(union_members("server_event")) == SERVER_TYPES
    assert set(message_defs()) == set(CLIENT_TYPES) | SERVER_TYPES


@pytest.mark.parametrize("name", sorted(set(CLIENT_TYPES) | SERVER_TYPES))
def test_definitions_are_closed_and_discriminated_by_type(name: str) -> None:
    definition = DEFS[name]
    assert definition["type"] == "object"
    assert definition["additionalProperties"] is False
    assert definition["properties"]["type"] == {"const": name}
    assert "type" in definition["required"]
    assert set(definition["required"]) <= set(definition["properties"])


def test_the_root_accepts_both_directions() -> None:
    validator = Draft202012Validator(SCHEMA)
    assert validator.is_valid({"type": "ping"})
    assert validator.is_valid({"type": "pong"})
    assert not validator.is_valid({"type": "nope"})


def test_error_codes_match_the_enum() -> None:
    assert DEFS["error"]["properties"]["code"]["enum"] == [code.value for code in ErrorCode]


def test_limits_match_the_constants() -> None:
    user_message = DEFS["user_message"]["properties"]
    assert user_message["text"]["maxLength"] == MAX_TEXT_CHARS
    assert DEFS["auth"]["properties"]["token"]["maxLength"] == MAX_TOKEN_CHARS
    assert DEFS["id"]["maxLength"] == 128
    assert (
        DEFS["id"]["pattern"]
        == "^" + ID_PATTERN.pattern.replace(r"\-", "-").replace("{1,128}", "+") + "$"
    )
    limits = DEFS["connection_ready"]["properties"]["limits"]
    assert set(limits["required"]) == set(Settings().limits())


# -- server -> client --------------------------------------------------------


def run(payload: RunPayload, seq: int = 2, thread_seq: int = 0) -> RunEvent:
    return RunEvent("run_Ab-_0123456789xy", "thr_Q:1.x", seq, payload, thread_seq)


EVENTS: tuple[ServerEvent, ...] = (
    ConnectionReady("conn_abc", "alice", Settings().limits()),
    ConnectionReady("conn_abc", "a" * 256, Settings(rate_per_s=0.5, idle_timeout_s=1).limits()),
    run(AgentStarted("echo"), seq=1),
    run(AgentStarted("echo", client_id="c.1"), seq=1),
    run(AgentThinking("I will count the words.")),
    run(AgentThinking("")),
    run(AgentDelta("Hello, wor")),
    run(AgentDelta("ld"), thread_seq=9),
    run(ToolExecuting("word_count", {"text": "hi"}), seq=3),
    run(ToolExecuting("t", None)),
    run(ToolCompleted("word_count", {"words": 1}), seq=4),
    run(ToolCompleted("t", [1, "a", None, True, 1.5, {"x": []}])),
    run(AgentCompleted({"text": "hi", "words": 1}), seq=5),
    run(AgentCompleted(None)),
    run(AgentCompleted("done"), seq=10_000),
    *(run(AgentError(code, "the run failed")) for code in AGENT_ERROR_CODES),
    *(run(RunCancelled(reason)) for reason in CANCEL_REASONS),
    *(ErrorEvent(code, "message") for code in ErrorCode),
    ErrorEvent(ErrorCode.INVALID_MESSAGE, "field 'text' is required", "c1", "text"),
    ErrorEvent(ErrorCode.INVALID_MESSAGE, "message must be a JSON object", None, ""),
    ErrorEvent(ErrorCode.INVALID_MESSAGE, "unknown field", None, "k" * 64 + "..."),
    ErrorEvent(ErrorCode.RUN_NOT_FOUND, "no such run", "run_x"),
    ErrorEvent(ErrorCode.TOO_MANY_RUNS, "at most 4 runs", "c-" + "9" * 126),
    Pong(),
    AuthOk(1_800_000_000.0),
    AuthOk(0),
    ConnectionReady("conn_abc", "alice", Settings().limits(), epoch="e" * 16),
    run(AgentStarted("echo"), seq=1, thread_seq=2),
    run(AgentThinking("hm"), thread_seq=3),
    run(ToolExecuting("t", None), thread_seq=4),
    run(ToolCompleted("t", None), thread_seq=5),
    run(AgentCompleted(None), thread_seq=6),
    run(AgentError("agent_failed", "x"), thread_seq=2**53),
    run(RunCancelled("client_gone"), thread_seq=1),
    MessageAccepted("run_1", "thr_1", 1, "hello", "c1"),
    MessageAccepted("run_1", "thr_1", 2**53, "x" * MAX_TEXT_CHARS),
    HistoryPage("thr_1", (), False),
    HistoryPage(
        "thr_1",
        (
            {"type": "message_accepted", "run_id": "r", "thread_id": "t", "thread_seq": 1},
            {"type": "agent_started", "thread_seq": 2, "seq": 1},
        ),
        True,
    ),
    ThreadList(()),
    ThreadList(({"thread_id": "thr_1", "last_seq": 3, "updated_at": 1_800_000_000.5},)),
    Resumed("thr_1", True, last_seq=5),
    Resumed("thr_1", True, last_seq=5, live_runs=("run_1", "run_2")),
    *(Resumed("thr_1", False, reason=r) for r in ("unknown_thread", "epoch_changed", "retention")),
    DuplicateMessage("thr_1", "c1", "run_1"),
)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: wire(e)["type"])
def test_every_event_conforms(event: ServerEvent) -> None:
    data = wire(event)
    validate_server_event(data)
    assert is_valid(data, "server_event")
    assert is_valid(data, data["type"])


def test_events_cover_every_event_type_and_field() -> None:
    seen: dict[str, set[str]] = {}
    for event in EVENTS:
        data = wire(event)
        seen.setdefault(data["type"], set()).update(data)
    assert set(seen) == SERVER_TYPES
    for name, fields in seen.items():
        assert fields == set(DEFS[name]["properties"]), name


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
ids = st.from_regex(ID_PATTERN, fullmatch=True)
later_seq = st.integers(min_value=2, max_value=2**53)


def run_events() -> st.SearchStrategy[RunEvent]:
    def stamped(payload: st.SearchStrategy[Any], seq: st.SearchStrategy[int]) -> Any:
        return st.builds(RunEvent, ids, ids, seq, payload)

    return st.one_of(
        stamped(st.builds(AgentStarted, st.text(), st.none() | ids), st.just(1)),
        stamped(st.builds(AgentThinking, st.text()), later_seq),
        stamped(st.builds(AgentDelta, st.text()), later_seq),
        stamped(st.builds(ToolExecuting, st.text(), json_values), later_seq),
        stamped(st.builds(ToolCompleted, st.text(), json_values), later_seq),
        stamped(st.builds(AgentCompleted, json_values), later_seq),
        stamped(st.builds(AgentError, st.sampled_from(AGENT_ERROR_CODES), st.text()), later_seq),
        stamped(st.builds(RunCancelled, st.sampled_from(CANCEL_REASONS)), later_seq),
    )


connection_events = st.one_of(
    st.builds(
        ErrorEvent,
        st.sampled_from(ErrorCode),
        st.text(),
        st.none() | ids,
        st.none() | st.text(max_size=67),
    ),
    st.builds(AuthOk, st.floats(min_value=0, max_value=253_402_300_799)),
    st.just(Pong()),
)


@given(run_events() | connection_events)
def test_generated_events_conform(event: ServerEvent) -> None:
    data = wire(event)
    validate_server_event(data)
    assert is_valid(data, "server_event")
    assert is_valid(data, data["type"])


def break_event(data: dict[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    out = {**data, **change}
    return {k: v for k, v in out.items() if v is not DELETE}


DELETE = object()
STARTED = wire(run(AgentStarted("echo", "c1"), seq=1))
THINKING = wire(run(AgentThinking("hm")))


@pytest.mark.parametrize(
    "data",
    [
        break_event(THINKING, {"extra": 1}),
        break_event(THINKING, {"seq": DELETE}),
        break_event(THINKING, {"seq": 0}),
        break_event(THINKING, {"seq": 1}),
        break_event(THINKING, {"seq": "2"}),
        break_event(THINKING, {"seq": 2.5}),
        break_event(THINKING, {"run_id": "run 1"}),
        break_event(THINKING, {"thread_id": DELETE}),
        break_event(THINKING, {"thought": None}),
        break_event(STARTED, {"seq": 2}),
        break_event(STARTED, {"client_id": None}),
        break_event(STARTED, {"client_id": "bad id"}),
        break_event(wire(run(AgentError("agent_failed", "x"))), {"error": DELETE}),
        break_event(wire(run(AgentError("agent_failed", "x"))), {"error": {"code": "boom"}}),
        break_event(
            wire(run(AgentError("agent_failed", "x"))),
            {"error": {"code": "agent_failed", "message": "x", "detail": 1}},
        ),
        break_event(wire(run(RunCancelled("cancelled_by_client"))), {"reason": "bored"}),
        break_event(wire(run(AgentCompleted(1))), {"result": DELETE}),
        break_event(wire(ErrorEvent(ErrorCode.RATE_LIMITED, "x")), {"code": "agent_failed"}),
        break_event(wire(ErrorEvent(ErrorCode.RATE_LIMITED, "x")), {"ref": None}),
        break_event(wire(ErrorEvent(ErrorCode.RATE_LIMITED, "x")), {"ref": "a\n"}),
        break_event(wire(ErrorEvent(ErrorCode.RATE_LIMITED, "x")), {"field": "f" * 68}),
        break_event(wire(ConnectionReady("conn_1", "a", {})), {}),
        break_event(wire(ConnectionReady("conn_1", "", Settings().limits())), {}),
        break_event(wire(ConnectionReady("conn_1", "a", Settings().limits())), {"protocol": "v2"}),
        break_event(wire(ConnectionReady("conn_1", "a", {**Settings().limits(), "other": 1})), {}),
        break_event(wire(AuthOk(5.0)), {"expires_at": "soon"}),
        break_event(wire(Pong()), {"seq": 1}),
        {"type": "agent_started"},
        {"type": "ping"},
        {"type": "nope"},
        {},
        [],
        "pong",
    ],
)
def test_schema_rejects_malformed_events(data: Any) -> None:
    assert not is_valid(data, "server_event")
    with pytest.raises(ValidationError):
        validate_server_event(data)


def test_validation_errors_name_the_problem() -> None:
    with pytest.raises(ValidationError) as info:
        validate_server_event(break_event(THINKING, {"seq": 0}))
    assert list(info.value.absolute_path) == ["seq"]
    with pytest.raises(KeyError):
        validate({}, "no_such_definition")


# -- client -> server: the parser and the schema agree -----------------------


def strict_loads(text: str) -> Any:
    """JSON with the parser's extra rules: duplicate keys and NaN/Infinity are errors."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in items}) != len(items):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(name)

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def assert_agree(obj: Any, text: str | None = None) -> bool:
    """Parser and schema give the same verdict on ``obj``; returns the verdict."""
    parsed = parse_client_message(json.dumps(obj) if text is None else text)
    if _has_lone_surrogate(obj):
        # Like duplicate keys: valid JSON grammar, but no UTF-8 frame could echo
        # it, so the parser says invalid_json; a schema cannot express it portably.
        assert isinstance(parsed, ProtocolError), (obj, parsed)
        assert parsed.code is ErrorCode.INVALID_JSON
        return False
    accepted = not isinstance(parsed, ProtocolError)
    valid = is_valid(obj, "client_message")
    assert accepted == valid, (obj, parsed)
    if isinstance(parsed, ProtocolError):
        # What the client gets back conforms too.
        error = wire(ErrorEvent(parsed.code, parsed.message, parsed.ref, parsed.field))
        assert is_valid(error, "error"), error
    else:
        assert_same_message(obj, parsed)
    return accepted


def assert_same_message(obj: Mapping[str, Any], message: ClientMessage) -> None:
    assert MESSAGE_TYPE[type(message)] == obj["type"]
    assert is_valid(obj, obj["type"])
    fields = {k: v for k, v in attrs.asdict(message).items() if v is not None}
    given = {k: v for k, v in obj.items() if k != "type" and v is not None}
    if "limit" in fields and "limit" not in given:  # the default page size
        given["limit"] = DEFAULTS[obj["type"]]
    assert fields == given


#: Every field any client message has, and one nobody has.
FIELDS = (
    "text",
    "thread_id",
    "client_id",
    "run_id",
    "token",
    "before",
    "after",
    "limit",
    "epoch",
    "extra",
)
#: The longest valid value of each string field.
LIMITS: Mapping[str, int] = {
    "text": MAX_TEXT_CHARS,
    "thread_id": 128,
    "client_id": 128,
    "run_id": 128,
    "token": MAX_TOKEN_CHARS,
    "extra": 128,
    "epoch": 128,
}
#: Integer fields: (smallest, largest) valid value.
INT_LIMITS: Mapping[str, tuple[int, int]] = {
    "before": (1, MAX_SEQ),
    "after": (0, MAX_SEQ),
    "limit": (1, MAX_PAGE),
}


def edge_strings(limit: int) -> tuple[str, ...]:
    """Strings at and around a length limit and at the edge of the id alphabet."""
    return (
        *("", "a", "a" * (limit - 1), "a" * limit, "a" * (limit + 1)),
        *("é" * limit, "\U0001f600" * (limit + 1), "\ud800"),
        *("\n", "a\n", "a\nb", "a ", " a", "a/b", "é", "\x00", "a" * (limit - 1) + "\n"),
    )


def edge_ints(low: int, high: int) -> tuple[Any, ...]:
    """Integers at and around a range, and numbers that are not integers."""
    return (low - 1, low, low + 1, high - 1, high, high + 1, -1, 2.5, True, False, "1")


EDGE_STRINGS: Mapping[str, tuple[Any, ...]] = {
    **{name: edge_strings(n) for name, n in LIMITS.items()},
    **{name: edge_ints(low, high) for name, (low, high) in INT_LIMITS.items()},
}
good_value: Mapping[str, st.SearchStrategy[Any]] = {
    "text": st.text(min_size=1, max_size=30) | st.sampled_from(("x" * MAX_TEXT_CHARS, "\n")),
    "thread_id": ids,
    "client_id": ids,
    "run_id": ids,
    "token": st.text(min_size=1, max_size=30) | st.just("t" * MAX_TOKEN_CHARS),
    "extra": ids,
    "epoch": st.text(min_size=1, max_size=30),
    **{name: st.integers(low, high) for name, (low, high) in INT_LIMITS.items()},
}
not_strings = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(ids, max_size=1),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=1),
)
wrong_types = st.one_of(
    st.sampled_from(["pong", "error", "PING", "", "ping ", "user-message"]),
    st.none(),
    st.integers(),
    st.booleans(),
    st.lists(st.sampled_from(CLIENT_TYPES), max_size=1),
)
#: One thing wrong (or maybe not): "edge" three times as likely as the others.
MUTATIONS = ("edge", "edge", "edge", "null", "not_string", "drop", "add", "type")


@st.composite
def valid_messages(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A client message the parser accepts: required fields set, optional ones maybe null."""
    definition = DEFS[kind]
    obj: dict[str, Any] = {"type": kind}
    for name in sorted(set(definition["properties"]) - {"type"}):
        if name in definition["required"]:
            obj[name] = draw(good_value[name])
        else:
            choice = draw(st.integers(0, 2))
            if choice:
                obj[name] = draw(good_value[name]) if choice == 1 else None
    return obj


@st.composite
def near_valid_messages(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A valid message of ``kind`` with zero to two mutations."""
    obj = draw(valid_messages(kind))
    own = sorted(set(DEFS[kind]["properties"]) - {"type"}) or ["extra"]
    for _ in range(draw(st.integers(0, 2))):
        mutation = draw(st.sampled_from(MUTATIONS))
        if mutation == "type":
            obj["type"] = draw(wrong_types)
        elif mutation == "drop" and obj:
            del obj[draw(st.sampled_from(sorted(obj)))]
        elif mutation == "add":
            name = draw(st.sampled_from([f for f in FIELDS if f not in own]))
            obj[name] = draw(good_value[name])
        else:
            name = draw(st.sampled_from(own))
            if mutation == "edge":
                obj[name] = draw(st.sampled_from(EDGE_STRINGS[name]))
            elif mutation == "null":
                obj[name] = None
            else:
                obj[name] = draw(not_strings)
    return obj


def near_valid_cases() -> Iterator[dict[str, Any]]:
    yield {"type": "user_message", "text": "hi"}
    yield {"type": "user_message", "text": "x" * MAX_TEXT_CHARS, "thread_id": "t" * 128}
    yield {"type": "user_message", "text": "x" * (MAX_TEXT_CHARS + 1)}
    yield {"type": "user_message", "text": "\U0001f600" * MAX_TEXT_CHARS}
    yield {"type": "user_message", "text": " ", "thread_id": None, "client_id": None}
    yield {"type": "user_message", "text": None}
    yield {"type": "user_message", "text": ""}
    yield {"type": "user_message", "text": True}
    yield {"type": "user_message", "text": "hi", "thread_id": "t" * 129}
    yield {"type": "user_message", "text": "hi", "client_id": ""}
    yield {"type": "user_message", "text": "hi", "client_id": "c1\n"}
    yield {"type": "user_message", "text": "hi", "client_id": "c 1"}
    yield {"type": "user_message", "text": "hi", "client_id": "é"}
    yield {"type": "user_message", "text": "hi", "run_id": "r1"}
    yield {"type": "cancel", "run_id": "run_-:.Az09"}
    yield {"type": "cancel", "run_id": None}
    yield {"type": "cancel"}
    yield {"type": "cancel", "run_id": 7}
    yield {"type": "ping"}
    yield {"type": "ping", "text": None}
    yield {"type": "auth", "token": "t" * MAX_TOKEN_CHARS}
    yield {"type": "auth", "token": "t" * (MAX_TOKEN_CHARS + 1)}
    yield {"type": "auth", "token": ""}
    yield {"type": "history", "thread_id": "thr_1"}
    yield {"type": "history", "thread_id": "thr_1", "before": 1, "limit": MAX_PAGE}
    yield {"type": "history", "thread_id": "thr_1", "before": 0}
    yield {"type": "history", "thread_id": "thr_1", "limit": MAX_PAGE + 1}
    yield {"type": "history", "thread_id": "thr_1", "limit": True}
    yield {"type": "history"}
    yield {"type": "threads"}
    yield {"type": "threads", "limit": 1}
    yield {"type": "threads", "limit": 0}
    yield {"type": "threads", "limit": 1.5}
    yield {"type": "resume", "thread_id": "thr_1", "after": 0}
    yield {"type": "resume", "thread_id": "thr_1", "after": MAX_SEQ, "epoch": "e1"}
    yield {"type": "resume", "thread_id": "thr_1", "after": MAX_SEQ + 1}
    yield {"type": "resume", "thread_id": "thr_1", "after": -1}
    yield {"type": "resume", "thread_id": "thr_1"}
    yield {"type": "resume", "thread_id": "thr_1", "after": 0, "epoch": ""}
    yield {"type": "Ping"}
    yield {"type": None}
    yield {"text": "hi"}
    yield {}


@pytest.mark.parametrize("obj", list(near_valid_cases()))
def test_parser_and_schema_agree_on_edge_cases(obj: dict[str, Any]) -> None:
    if assert_agree(obj):
        validate_client_message(obj)
    else:
        with pytest.raises(ValidationError):
            validate_client_message(obj)


@pytest.mark.parametrize("kind", CLIENT_TYPES)
@settings(max_examples=300)
@given(data=st.data())
def test_parser_and_schema_agree_near_valid(kind: str, data: st.DataObject) -> None:
    assert_agree(data.draw(near_valid_messages(kind), label="message"))


@pytest.mark.parametrize("kind", CLIENT_TYPES)
def test_near_valid_strategy_reaches_both_verdicts(kind: str) -> None:
    accepted = find(near_valid_messages(kind), lambda obj: is_valid(obj, "client_message"))
    rejected = find(near_valid_messages(kind), lambda obj: not is_valid(obj, kind))
    assert assert_agree(accepted)
    assert not assert_agree(rejected)


@given(
    json_values
    | st.dictionaries(st.sampled_from(("type", *FIELDS)) | st.text(max_size=4), json_values)
    | st.fixed_dictionaries(
        {"type": st.sampled_from(CLIENT_TYPES)},
        optional={name: json_values | st.sampled_from(EDGE_STRINGS[name]) for name in FIELDS},
    )
)
@example({"type": "ping", "": None})
@example({"type": "cancel", "run_id": ["r1"]})
def test_parser_and_schema_agree_on_any_json(obj: Any) -> None:
    assert_agree(obj)


@given(
    st.text()
    | st.builds(json.dumps, st.sampled_from(CLIENT_TYPES).flatmap(near_valid_messages))
    | st.builds(
        lambda obj, pad: pad + json.dumps(obj, ensure_ascii=False) + pad,
        st.sampled_from(CLIENT_TYPES).flatmap(near_valid_messages),
        st.text(" \t\r\n"),
    )
)
@example('{"type":"ping"}')
@example(' {"type" : "ping"}\n')
@example('{"type":"user_message","text":"\\ud800"}')
@example('{"type":"ping"} x')
def test_parser_and_schema_agree_on_any_text(text: str) -> None:
    try:
        obj = strict_loads(text)
    except (ValueError, RecursionError):
        # Not JSON (or duplicate keys, NaN): the schema has nothing to say.
        parsed = parse_client_message(text)
        assert isinstance(parsed, ProtocolError)
        assert parsed.code is ErrorCode.INVALID_JSON
        return
    assert_agree(obj, text)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"ping","type":"ping"}',
        '{"type":"user_message","text":"a","text":"b"}',
        '{"type":"user_message","text":NaN}',
        '{"type":"user_message","text":"hi","client_id":Infinity}',
    ],
)
def test_rules_the_schema_cannot_express(text: str) -> None:
    # Duplicate keys and NaN/Infinity are rejected by the parser as invalid_json;
    # a JSON Schema sees only the parsed value (Python keeps the last duplicate).
    parsed = parse_client_message(text)
    assert isinstance(parsed, ProtocolError)
    assert parsed.code is ErrorCode.INVALID_JSON


# -- the state machine and a live session send only conforming events --------


def test_state_machine_replies_conform() -> None:
    state = ConnectionState(RunLimits(max_runs=1, rate_per_s=1.0, rate_burst=20))
    texts = [
        json.dumps({"type": "user_message", "text": "hi", "client_id": "c1"}),
        json.dumps({"type": "user_message", "text": "hi", "client_id": "c2"}),
        json.dumps({"type": "cancel", "run_id": "run_unknown"}),
        json.dumps({"type": "ping"}),
        json.dumps({"type": "ping", "extra": 1, "client_id": "c3"}),
        json.dumps({"type": "nope", "run_id": "r9"}),
        json.dumps([1]),
        "{",
    ]
    actions = [action for text in texts for action in state.receive_text(text, 0.0)]
    state.begin_drain()
    actions += state.receive_text(json.dumps({"type": "user_message", "text": "x"}), 0.0)
    for _ in range(20):
        actions += state.receive_text(json.dumps({"type": "ping"}), 0.0)
    codes = set()
    for action in actions:
        if not isinstance(action, Reply):
            continue
        data = wire(action.event)
        validate_server_event(data)
        codes.add(data.get("code"))
    # invalid_token needs the verifier, run_not_found the session's search of the
    # user's followed threads, thread_busy a store shared with another process: the
    # session's replies (test_session_frames_conform; tests/app/server/test_serve_shared.py).
    session_only = {ErrorCode.INVALID_TOKEN, ErrorCode.RUN_NOT_FOUND, ErrorCode.THREAD_BUSY}
    assert codes - {None} == set(ErrorCode) - session_only


SECRET = b"s" * 32
NOW = 1_800_000_000.0


@attrs.frozen
class ScriptedAgent:
    """The echo agent after a delta, except for the texts ``fail`` (raises) and ``wait``
    (never ends)."""

    name: str = "scripted"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        if run.text == "fail":
            raise RuntimeError("agent bug")
        if run.text == "wait":
            await trio.sleep_forever()
        await emit(AgentDelta(delta=run.text))
        return await EchoAgent().run(run, emit)


async def test_session_frames_conform(autojump_clock: trio.testing.MockClock) -> None:
    settings = Settings(jwt_secret=SECRET, max_runs=1)
    services = Services(
        settings=settings,
        verifier=TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",))),
        agent=ScriptedAgent(),
        log=logging.getLogger("test.schema"),
        wall_clock=lambda: NOW,
    )
    lifecycle = ServerLifecycle(max_connections=1)
    transport, client = memory_transport_pair()
    context = UserContext("alice", "conn_test", NOW + 3600, "authorization")
    frames: list[dict[str, Any]] = []

    async def until(kind: str, **match: Any) -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = await client.receive_json()
            validate_server_event(frame)
            frames.append(frame)
            if frame["type"] == kind and match.items() <= frame.items():
                return frame

    async def send(obj: Any) -> None:
        await client.send_text(obj if isinstance(obj, str) else json.dumps(obj))

    good = mint_token(secret=SECRET, algorithm="HS256", subject="alice", ttl_s=600, now=NOW)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_session, transport, context, services, lifecycle)
        await until("connection_ready", protocol=PROTOCOL)
        await send({"type": "user_message", "text": "hello world", "client_id": "c1"})
        await until("agent_completed")
        await send({"type": "user_message", "text": "fail"})
        await until("agent_error")
        await send({"type": "user_message", "text": "wait", "client_id": "c3"})
        started = await until("agent_started", client_id="c3")
        await send({"type": "user_message", "text": "wait", "client_id": "c4"})
        await until("error", code="too_many_runs", ref="c4")
        await send({"type": "cancel", "run_id": started["run_id"]})
        await until("run_cancelled", reason="cancelled_by_client")
        await send({"type": "cancel", "run_id": started["run_id"]})
        await until("error", code="run_not_found", ref=started["run_id"])
        for text in ['{"type":"ping"}', "{", '{"type":"nope"}', '{"type":"ping","x":1}']:
            await send(text)
        await until("error", code="invalid_message", field="x")
        await send({"type": "auth", "token": "not-a-jwt"})
        await until("error", code="invalid_token")
        await send({"type": "auth", "token": good})
        await until("auth_ok")
        thread = started["thread_id"]
        await send({"type": "history", "thread_id": thread, "limit": 2})
        await until("history_page", thread_id=thread)
        await send({"type": "threads"})
        await until("thread_list")
        await send({"type": "resume", "thread_id": thread, "after": 0})
        await until("resumed", recovered=True)
        await send({"type": "resume", "thread_id": "thr_none", "after": 0})
        await until("resumed", reason="unknown_thread")
        await send({"type": "user_message", "text": "wait", "client_id": "c3", "thread_id": thread})
        await until("duplicate_message", client_id="c3")
        await send({"type": "user_message", "text": "wait"})
        await until("agent_started")
        lifecycle.begin_drain(grace_s=1)
        await trio.testing.wait_all_tasks_blocked()
        await send({"type": "user_message", "text": "late", "client_id": "c6"})
        await until("error", code="shutting_down", ref="c6")
        await until("run_cancelled", reason="server_shutdown")
        with pytest.raises(PeerClosed) as closed:
            await until("never")
        assert (closed.value.code, closed.value.reason) == (1001, "server_shutdown")
    assert {frame["type"] for frame in frames} == SERVER_TYPES
    assert {frame.get("code") for frame in frames} >= {"unknown_type", "invalid_json"}


# -- coverage of the schema ----------------------------------------------------


CLIENT_EXAMPLES = tuple(obj for obj in near_valid_cases() if is_valid(obj, "client_message"))


def test_every_definition_is_exercised() -> None:
    exercised_client = {obj["type"] for obj in CLIENT_EXAMPLES}
    exercised_server = {wire(event)["type"] for event in EVENTS}
    assert set(message_defs()) == exercised_client | exercised_server
    assert set(DEFS) == set(message_defs()) | HELPER_DEFS
