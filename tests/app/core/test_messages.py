import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core._codes import ErrorCode
from app.core._messages import (
    MAX_TEXT_CHARS,
    Authenticate,
    CancelRun,
    Ping,
    ProtocolError,
    UserMessage,
    parse_client_message,
)


def error_of(text: str) -> ProtocolError:
    result = parse_client_message(text)
    assert isinstance(result, ProtocolError), result
    return result


def test_user_message_minimal() -> None:
    assert parse_client_message('{"type":"user_message","text":"hi"}') == UserMessage("hi")


def test_user_message_full() -> None:
    msg = {"type": "user_message", "text": "hi", "thread_id": "t-1", "client_id": "c.1"}
    assert parse_client_message(json.dumps(msg)) == UserMessage("hi", "t-1", "c.1")


def test_null_optional_fields_count_as_absent() -> None:
    msg = {"type": "user_message", "text": "hi", "thread_id": None, "client_id": None}
    assert parse_client_message(json.dumps(msg)) == UserMessage("hi")


def test_other_messages() -> None:
    assert parse_client_message('{"type":"cancel","run_id":"run_1"}') == CancelRun("run_1")
    assert parse_client_message('{"type":"ping"}') == Ping()
    assert parse_client_message('{"type":"auth","token":"abc"}') == Authenticate("abc")


def test_token_is_not_in_repr() -> None:
    assert "secret-token" not in repr(Authenticate("secret-token"))


@pytest.mark.parametrize(
    "text",
    ["", "{", "nope", '{"type":"ping"} x', "NaN", '{"a": Infinity}', "[" * 100_000],
)
def test_invalid_json(text: str) -> None:
    assert error_of(text).code is ErrorCode.INVALID_JSON


def test_duplicate_keys_are_invalid_json() -> None:
    err = error_of('{"type":"ping","type":"ping"}')
    assert err.code is ErrorCode.INVALID_JSON
    assert "duplicate key" in err.message


def test_huge_number_is_invalid_json() -> None:
    err = error_of('{"type":"ping","n":' + "9" * 5000 + "}")
    assert err.code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("text", ["[]", "1", '"s"', "null", "true"])
def test_non_object(text: str) -> None:
    err = error_of(text)
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert err.message == "message must be a JSON object"


@pytest.mark.parametrize("kind", [None, 1, [], {}])
def test_type_must_be_string(kind: object) -> None:
    body = {} if kind is None else {"type": kind}
    err = error_of(json.dumps(body))
    assert (err.code, err.field) == (ErrorCode.INVALID_MESSAGE, "type")


def test_unknown_type_names_it_and_keeps_ref() -> None:
    err = error_of('{"type":"dance","client_id":"c1"}')
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert "'dance'" in err.message
    assert err.ref == "c1"


def test_unknown_type_is_truncated() -> None:
    err = error_of(json.dumps({"type": "x" * 1000}))
    assert len(err.message) < 120


def test_unknown_field_is_named() -> None:
    err = error_of('{"type":"ping","extra":1}')
    assert (err.code, err.field) == (ErrorCode.INVALID_MESSAGE, "extra")


@pytest.mark.parametrize(
    ("message", "field", "fragment"),
    [
        ({"type": "user_message"}, "text", "required"),
        ({"type": "user_message", "text": 5}, "text", "must be a string"),
        ({"type": "user_message", "text": ""}, "text", "must not be empty"),
        ({"type": "user_message", "text": "x" * (MAX_TEXT_CHARS + 1)}, "text", "longer"),
        ({"type": "user_message", "text": "x", "thread_id": 3}, "thread_id", "string"),
        ({"type": "user_message", "text": "x", "thread_id": "a b"}, "thread_id", "match"),
        ({"type": "user_message", "text": "x", "client_id": "c" * 129}, "client_id", "longer"),
        ({"type": "cancel"}, "run_id", "required"),
        ({"type": "cancel", "run_id": ["r"]}, "run_id", "string"),
        ({"type": "auth"}, "token", "required"),
        ({"type": "auth", "token": "t" * 9000}, "token", "longer"),
    ],
)
def test_field_errors(message: dict[str, object], field: str, fragment: str) -> None:
    err = error_of(json.dumps(message))
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert err.field == field
    assert fragment in err.message


def test_ref_prefers_valid_ids_only() -> None:
    err = error_of('{"type":"user_message","client_id":"bad id"}')
    assert err.ref is None
    err = error_of('{"type":"cancel","run_id":"run_1","x":1}')
    assert err.ref == "run_1"


@given(st.text(max_size=200))
def test_any_string_gives_message_or_error(text: str) -> None:
    result = parse_client_message(text)
    assert isinstance(result, UserMessage | CancelRun | Ping | Authenticate | ProtocolError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "text", "thread_id", "client_id", "run_id", "token", "x"]),
        json_values | st.sampled_from(["user_message", "cancel", "ping", "auth", "id-1"]),
        max_size=5,
    )
)
def test_any_object_gives_message_or_error(obj: dict[str, object]) -> None:
    result = parse_client_message(json.dumps(obj))
    if isinstance(result, ProtocolError):
        assert result.code in ErrorCode
        assert result.message
    else:
        assert obj["type"] in {"user_message", "cancel", "ping", "auth"}


@pytest.mark.parametrize(
    "text",
    ['{"type":"ping","\\ud800":1}', '{"type":"user_message","text":"a\\udfff"}'],
)
def test_lone_surrogates_are_invalid_json(text: str) -> None:
    err = error_of(text)
    assert err.code is ErrorCode.INVALID_JSON
    assert "surrogate" in err.message


def test_escaped_pairs_and_nested_values_are_fine() -> None:
    msg = parse_client_message('{"type":"user_message","text":"\\ud83d\\ude00 \\u00e9"}')
    assert msg == UserMessage("\U0001f600 é")
    err = error_of('{"type":"ping","x":[{"\\u00e9":"\\ud800"}]}')
    assert "surrogate" in err.message
