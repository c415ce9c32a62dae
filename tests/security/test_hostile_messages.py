"""Hostile chat.v1 messages: each gets an ``error`` event with its code; the connection stays.

Frames here are well-formed WebSocket text frames whose JSON is hostile: absurd nesting
and numbers, duplicate and unknown keys, and every field of every client message with
every JSON type it must not have (generated from ``app/schemas/chat.v1.json``). Over
both transports, since the frame reaches the session through each one's reader; the
parser itself is unit-tested in ``tests/app/test_messages.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import pytest

from app.core._codes import ErrorCode
from app.core._messages import ProtocolError, parse_client_message
from app.testing._schema import load_schema

if TYPE_CHECKING:
    from tests.security.conftest import E2E, Hostile

SCHEMA: Final = load_schema()
DEFS: Final[Mapping[str, Any]] = SCHEMA["$defs"]
CLIENT_TYPES: Final = ("user_message", "cancel", "ping", "auth")
#: One value of each JSON type.
JSON_VALUES: Final[Mapping[str, Any]] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 1.5,
    "string": "s",
    "array": ["s"],
    "object": {"k": "s"},
}
#: A valid message of each type, the base the wrong values are put into.
VALID: Final[Mapping[str, dict[str, Any]]] = {
    "user_message": {"type": "user_message", "text": "hi", "thread_id": "t1", "client_id": "c1"},
    "cancel": {"type": "cancel", "run_id": "run_1"},
    "ping": {"type": "ping"},
    "auth": {"type": "auth", "token": "abc"},
}


def json_types(prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a schema property admits (``const`` and ``$ref`` followed)."""
    if "$ref" in prop:
        return json_types(DEFS[prop["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in prop:
        return set().union(*(json_types(p) for p in prop["anyOf"]))
    if "const" in prop:
        return {"string"}
    kind = prop["type"]
    types = {kind} if isinstance(kind, str) else set(kind)
    return types | ({"integer"} if "number" in types else set())


def wrong_type_cases() -> Iterator[tuple[str, str, str]]:
    """(message type, field, JSON type) for every field and every type it must not have."""
    for kind in CLIENT_TYPES:
        for field, prop in DEFS[kind]["properties"].items():
            for json_type in JSON_VALUES:
                if json_type not in json_types(prop):
                    yield kind, field, json_type


WRONG_TYPES: Final = list(wrong_type_cases())


def wrong_message(kind: str, field: str, json_type: str) -> str:
    return json.dumps({**VALID[kind], field: JSON_VALUES[json_type]})


def test_the_generated_cases_cover_every_field() -> None:
    fields = {(kind, field) for kind, field, _ in WRONG_TYPES}
    assert fields == {(k, f) for k in CLIENT_TYPES for f in DEFS[k]["properties"]}
    assert len(WRONG_TYPES) >= 40


@pytest.mark.parametrize(("kind", "field", "json_type"), WRONG_TYPES)
def test_every_field_with_every_wrong_type_is_invalid_message(
    kind: str, field: str, json_type: str
) -> None:
    result = parse_client_message(wrong_message(kind, field, json_type))
    assert isinstance(result, ProtocolError), result
    assert (result.code, result.field) == (ErrorCode.INVALID_MESSAGE, field)


async def test_every_wrong_type_on_the_wire_is_answered_and_the_connection_stays(
    e2e: E2E, hostile: Hostile
) -> None:
    """All the cases above on one connection: one ``error`` each, in order, then a turn."""
    async with e2e.server(rate_burst=1_000) as live, live.chat() as chat:
        for kind, field, json_type in WRONG_TYPES:
            await chat.send(wrong_message(kind, field, json_type))
            error = await chat.expect("error")
            assert (error["code"], error["field"]) == ("invalid_message", field), (kind, json_type)
        await chat.run_to_end("still here")
        await hostile.healthy(live)


NEST: Final = 100_000
#: case -> (frame text, documented code, documented field or None).
CASES: Final[dict[str, tuple[str, str, str | None]]] = {
    "100k-nested-arrays": ("[" * NEST, "invalid_json", None),
    "40k-nested-objects": ('{"a":' * 40_000 + "1" + "}" * 40_000, "invalid_json", None),
    "100k-nested-arrays-in-a-ping": ('{"type": "ping", "x": ' + "[" * NEST, "invalid_json", None),
    # Regression: deep enough to parse, but a recursive check for lone surrogates
    # overflowed the stack and closed the connection 1011.
    "500-nested-arrays-holding-non-ascii": (
        '{"type": "ping", "x": ' + "[" * 500 + '"é"' + "]" * 500 + "}",
        "invalid_message",
        "x",
    ),
    "500-nested-arrays-holding-an-escape": (
        '{"type": "ping", "x": ' + "[" * 500 + '"\\u00e9"' + "]" * 500 + "}",
        "invalid_message",
        "x",
    ),
    "1e400-as-a-field-value": (
        '{"type": "user_message", "text": 1e400}',
        "invalid_message",
        "text",
    ),
    "1e400-in-an-unknown-field": ('{"type": "ping", "n": 1e400}', "invalid_message", "n"),
    "-1e400-as-an-id": ('{"type": "cancel", "run_id": -1e400}', "invalid_message", "run_id"),
    "int-with-10000-digits": ('{"type": "ping", "n": ' + "9" * 10_000 + "}", "invalid_json", None),
    "int-with-10000-digits-as-type": ('{"type": ' + "1" * 10_000 + "}", "invalid_json", None),
    "NaN": ('{"type": "ping", "n": NaN}', "invalid_json", None),
    "Infinity": ('{"type": "ping", "n": -Infinity}', "invalid_json", None),
    "duplicate-keys": ('{"type": "ping", "type": "ping"}', "invalid_json", None),
    "duplicate-keys-nested": (
        '{"type": "user_message", "text": "a", "x": {"k": 1, "k": 2}}',
        "invalid_json",
        None,
    ),
    "unknown-field": ('{"type": "ping", "admin": true}', "invalid_message", "admin"),
    "unknown-field-with-a-1000-character-name": (
        json.dumps({"type": "cancel", "run_id": "r1", "k" * 1000: 1}),
        "invalid_message",
        "k" * 64 + "...",
    ),
    "lone-surrogate": ('{"type": "user_message", "text": "\\ud800"}', "invalid_json", None),
    "not-an-object": ('["type", "ping"]', "invalid_message", ""),
    "unknown-type": ('{"type": "dance"}', "unknown_type", None),
    "empty-frame": ("", "invalid_json", None),
    "nul-and-control-characters": ('{"type": "ping"}\x00\x01', "invalid_json", None),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_json_is_an_error_event(
    case: str, e2e: E2E, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    text, code, field = CASES[case]
    async with e2e.server(max_message_bytes=256 * 1024) as live, live.chat() as chat:
        await chat.send(text)
        error = await chat.expect("error")
        assert error["code"] == code, error
        assert error.get("field") == field
        assert len(error["message"]) <= 200
        await chat.run_to_end("still here")  # the connection stays and serves
        await hostile.healthy(live)
    assert hostile.server_errors(caplog) == []
