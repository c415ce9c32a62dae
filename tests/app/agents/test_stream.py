import json
from typing import Any

import pytest

from app.agents._stream import SSEDecoder, StreamError, ToolCall, Turn


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return json.dumps({"model": "m", "choices": [choice], **extra})


def test_events_split_anywhere() -> None:
    stream = b'data: {"a": 1}\r\n\r\n: comment\nevent: x\ndata: two\ndata: lines\n\ndata:[DONE]\n\n'
    for cut in range(len(stream)):
        decoder = SSEDecoder()
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) + decoder.end()
        assert events == ['{"a": 1}', "two\nlines", "[DONE]"], cut


def test_a_last_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x") == []
    assert decoder.end() == ["x"]
    assert SSEDecoder().end() == []


def test_oversized_and_non_utf8_events() -> None:
    with pytest.raises(StreamError, match="too large"):
        SSEDecoder(max_event_bytes=10).feed(b"data: " + b"x" * 20)
    decoder = SSEDecoder(max_event_bytes=10)
    with pytest.raises(StreamError, match="too large"):
        decoder.feed(b"data: 1234\ndata: 5678\n")
    with pytest.raises(StreamError, match="UTF-8"):
        SSEDecoder().feed(b"data: \xff\n\n")


def test_text_model_usage_and_finish() -> None:
    turn = Turn()
    assert turn.feed(chunk({"role": "assistant", "content": ""})) == ""
    assert turn.feed(chunk({"content": "Hel"})) == "Hel"
    assert turn.feed(chunk({"content": "lo"}, "stop")) == "lo"
    assert not turn.done
    assert turn.finished
    turn.feed(json.dumps({"choices": [], "usage": {"total_tokens": 3}}))
    assert turn.feed("[DONE]") == ""
    assert turn.feed("anything after DONE") == ""
    assert (turn.text, turn.model, turn.usage, turn.finish_reason) == (
        ["Hel", "lo"],
        "m",
        {"total_tokens": 3},
        "stop",
    )
    assert turn.tool_calls() == []


def test_only_the_first_choice_counts() -> None:
    turn = Turn()
    data = {"choices": [{"index": 1, "delta": {"content": "no"}}, {"delta": {"content": "yes"}}]}
    assert turn.feed(json.dumps(data)) == "yes"


def test_tool_calls_are_assembled_by_index() -> None:
    turn = Turn()
    pieces = [
        {"index": 1, "id": "b", "function": {"name": "clock", "arguments": ""}},
        {"index": 0, "id": "a", "function": {"name": "word_", "arguments": '{"te'}},
        {"index": 0, "function": {"name": "count", "arguments": 'xt": "hi"}'}},
        {"index": 1, "function": {"arguments": "{}"}},
    ]
    for piece in pieces:
        turn.feed(chunk({"tool_calls": [piece]}))
    turn.feed(chunk({}, "tool_calls"))
    assert turn.tool_calls() == [
        ToolCall("a", "word_count", '{"text": "hi"}'),
        ToolCall("b", "clock", "{}"),
    ]


def test_tool_calls_without_index_or_id() -> None:
    turn = Turn()
    turn.feed(chunk({"tool_calls": [{"id": "x", "function": {"name": "a", "arguments": "{}"}}]}))
    turn.feed(chunk({"tool_calls": [{"id": "y", "function": {"name": "b", "arguments": "{}"}}]}))
    turn.feed(chunk({"tool_calls": [{"index": 2, "function": {"name": "c"}}]}))
    turn.feed(chunk({"tool_calls": [{"index": 2, "id": "late"}]}))
    calls = turn.tool_calls()
    assert [(c.id, c.name) for c in calls] == [("x", "a"), ("y", "b"), ("late", "c")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{nope", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"error": {"message": "context too long"}}', "sent an error: context too long"),
        ('{"error": "busy"}', "sent an error: busy"),
        ('{"choices": {}}', "choices is not a list"),
        ('{"choices": [1]}', "a choice is not an object"),
        ('{"choices": [{"delta": {"content": 1}}]}', "content is not a str"),
        ('{"choices": [{"delta": {"tool_calls": [1]}}]}', "a tool call is not an object"),
        ('{"model": 1}', "model is not a str"),
    ],
)
def test_malformed_chunks(data: str, message: str) -> None:
    with pytest.raises(StreamError, match=message):
        Turn().feed(data)
