"""``--agent openai`` against the local mock model server (real sockets on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.lowlevel

from app.agents import (
    AgentFailure,
    AgentLoadError,
    AgentOptions,
    LLMOptions,
    OpenAIAgent,
    RunContext,
    Tool,
    ToolRegistry,
    load_agent,
    openai_agent,
)
from app.agents._openai import _add_usage
from app.core._codes import RunErrorCode
from app.core._events import AgentDelta, ToolCompleted, ToolExecuting
from app.testing import (
    MockLLM,
    Reply,
    answer_responder,
    error_reply,
    malformed_reply,
    open_mock_llm,
    scripted,
    text_reply,
    tool_reply,
)
from app.testing._schema import validate_server_event

if TYPE_CHECKING:
    from tests.app.conftest import E2E

KEY = "sk-test-0123456789secret"


def options(llm: MockLLM, **fields: Any) -> AgentOptions:
    values: dict[str, Any] = {"base_url": llm.base_url, "model": "mock-model", "api_key": KEY}
    values.update(fields)
    return AgentOptions(llm=LLMOptions(**values))


@asynccontextmanager
async def agent_for(
    *replies: Reply, tools: ToolRegistry | None = None, **fields: Any
) -> AsyncIterator[tuple[OpenAIAgent, MockLLM]]:
    async with open_mock_llm(scripted(*replies)) as llm:
        agent = openai_agent(options(llm, **fields), tools=tools)
        try:
            yield agent, llm
        finally:
            await agent.aclose()


async def collect(
    agent: OpenAIAgent, text: str = "hello", history: Sequence[tuple[str, str]] = ()
) -> tuple[list[object], Any]:
    seen: list[object] = []

    async def emit(payload: object) -> None:
        seen.append(payload)

    run = RunContext("run_1", "thr_1", "alice", text, history=tuple(history))
    with trio.fail_after(5):
        result = await agent.run(run, emit)
    return seen, result


async def failure(agent: OpenAIAgent) -> tuple[list[object], AgentFailure]:
    seen: list[object] = []

    async def emit(payload: object) -> None:
        seen.append(payload)

    with trio.fail_after(5), pytest.raises(AgentFailure) as caught:
        await agent.run(RunContext("run_1", "thr_1", "alice", "hello"), emit)
    assert KEY not in caught.value.message
    return seen, caught.value


def deltas(seen: Sequence[object]) -> str:
    return "".join(p.delta for p in seen if isinstance(p, AgentDelta))


# -- answers -----------------------------------------------------------------------


async def test_streams_the_answer_and_sends_the_conversation() -> None:
    async with agent_for(text_reply("Hello there, Alice.", delay_s=0.01)) as (agent, llm):
        agent = OpenAIAgent(
            client=agent.client, model="mock-model", tools=agent.tools, system_prompt="Be brief."
        )
        history = [("user", "hi"), ("assistant", "Hello!")]
        seen, result = await collect(agent, "who am I?", history)
    assert result == {
        "text": "Hello there, Alice.",
        "model": "mock-model",
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }
    # One chunk per write, 10 ms apart: each arrives on its own and is streamed at once.
    assert [p.delta for p in seen if isinstance(p, AgentDelta)] == ["Hello", " there,", " Alice."]
    assert all(isinstance(p, AgentDelta) for p in seen)
    (request,) = llm.requests
    assert request.method == "POST"
    assert request.target == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "mock-model"
    assert request.body["stream"] is True
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "who am I?"},
    ]
    assert [t["function"]["name"] for t in request.body["tools"]] == ["word_count", "clock"]


async def test_without_tools_or_key_the_request_has_neither() -> None:
    async with agent_for(text_reply("ok"), tools=ToolRegistry(), api_key=None) as (agent, llm):
        _, result = await collect(agent)
    assert result["text"] == "ok"
    assert "tools" not in llm.requests[0].body
    assert "authorization" not in llm.requests[0].headers
    assert llm.requests[0].messages == [{"role": "user", "content": "hello"}]


async def test_a_finish_reason_without_done_is_a_whole_answer() -> None:
    async with agent_for(text_reply("fine", done=False)) as (agent, _):
        _, result = await collect(agent)
    assert result["text"] == "fine"


async def test_runs_reuse_one_connection() -> None:
    async with agent_for(text_reply("one"), text_reply("two")) as (agent, llm):
        await collect(agent)
        await collect(agent)
    assert len(llm.requests) == 2
    assert llm.connections == 1


# -- tools -------------------------------------------------------------------------


async def test_tool_calls_run_and_the_conversation_continues() -> None:
    calls = [("word_count", '{"text": "one two three"}'), ("clock", "{}")]
    replies = (tool_reply(calls, piece_chars=3), text_reply("Three words."))
    async with agent_for(*replies) as (agent, llm):
        seen, result = await collect(agent, "count: one two three")
    assert result["text"] == "Three words."
    assert result["usage"]["completion_tokens"] == 2  # only the answer reported usage
    executing = [p for p in seen if isinstance(p, ToolExecuting)]
    completed = [p for p in seen if isinstance(p, ToolCompleted)]
    assert executing[0] == ToolExecuting("word_count", {"text": "one two three"})
    assert executing[1] == ToolExecuting("clock", {})
    assert completed[0] == ToolCompleted("word_count", {"words": 3})
    assert completed[1].tool_name == "clock"
    assert set(completed[1].results) == {"utc", "unix"}
    assert [type(p).__name__ for p in seen] == [
        "ToolExecuting",
        "ToolCompleted",
        "ToolExecuting",
        "ToolCompleted",
        "AgentDelta",
        "AgentDelta",
    ]
    second = llm.requests[1].messages
    assert second[0] == {"role": "user", "content": "count: one two three"}
    assistant = second[1]
    assert assistant["role"] == "assistant"
    assert [c["function"] for c in assistant["tool_calls"]] == [
        {"name": "word_count", "arguments": '{"text": "one two three"}'},
        {"name": "clock", "arguments": "{}"},
    ]
    assert second[2] == {"role": "tool", "tool_call_id": "call_0_mock", "content": '{"words":3}'}
    assert second[3]["tool_call_id"] == "call_1_mock"


async def test_unknown_tools_and_bad_arguments_are_reported_to_the_model() -> None:
    calls = [("nope", "{}"), ("word_count", '{"text": 3}'), ("word_count", "{not json")]
    async with agent_for(tool_reply(calls), text_reply("Sorry.")) as (agent, llm):
        seen, result = await collect(agent)
    assert result["text"] == "Sorry."
    completed = [p.results for p in seen if isinstance(p, ToolCompleted)]
    assert completed == [
        {"error": "unknown tool 'nope' (tools: word_count, clock)"},
        {"error": "argument 'text' must be of type string"},
        {"error": completed[2]["error"]},
    ]
    assert completed[2]["error"].startswith("arguments are not valid JSON")
    tool_messages = [m for m in llm.requests[1].messages if m["role"] == "tool"]
    assert [json.loads(m["content"]) for m in tool_messages] == completed
    executing = [p for p in seen if isinstance(p, ToolExecuting)]
    assert executing[2].tool_input == "{not json"


async def test_a_custom_async_tool() -> None:
    async def shout(text: str) -> str:
        await trio.lowlevel.checkpoint()
        return text.upper()

    tool = Tool(
        "shout", "Shout.", {"type": "object", "properties": {"text": {"type": "string"}}}, shout
    )
    replies = (tool_reply([("shout", '{"text": "hi"}')]), text_reply("HI"))
    async with agent_for(*replies, tools=ToolRegistry((tool,))) as (agent, _):
        seen, _ = await collect(agent)
    assert ToolCompleted("shout", "HI") in seen


async def test_tool_rounds_are_bounded() -> None:
    call = tool_reply([("clock", "{}")])
    async with agent_for(call, call, call, max_tool_rounds=2) as (agent, llm):
        seen, caught = await failure(agent)
    assert caught.code == RunErrorCode.TOO_MANY_TOOL_ROUNDS
    assert "2 rounds" in caught.message
    assert len(llm.requests) == 3
    assert sum(isinstance(p, ToolCompleted) for p in seen) == 2


# -- failures ----------------------------------------------------------------------


async def test_an_error_status(caplog: pytest.LogCaptureFixture) -> None:
    async with agent_for(error_reply(500, "overloaded")) as (agent, _):
        with caplog.at_level(logging.WARNING, "trio_enclave.openai"):
            _, caught = await failure(agent)
    assert caught.code == RunErrorCode.UPSTREAM_STATUS
    assert caught.message == "the model server answered 500 Internal Server Error"
    assert "overloaded" in caplog.text  # the body is for the operator's log only
    assert KEY not in caplog.text


async def test_a_stalled_stream_times_out_and_closes_the_connection() -> None:
    stalled = text_reply("never finished", stall_after=2)
    async with agent_for(stalled, read_timeout_s=0.2) as (agent, llm):
        seen, caught = await failure(agent)
        with trio.fail_after(1):
            await llm.wait_for(lambda m: m.aborted == 1)
    assert caught.code == RunErrorCode.UPSTREAM_TIMEOUT
    assert caught.message == "the model server did not answer in time (read timeout)"
    assert deltas(seen) == "never"  # the two events before the stall: role, first word


async def test_an_unreachable_server() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = openai_agent(
        AgentOptions(llm=LLMOptions(base_url=f"http://127.0.0.1:{port}/v1", model="m"))
    )
    try:
        _, caught = await failure(agent)
    finally:
        await agent.aclose()
    assert caught.code == RunErrorCode.UPSTREAM_UNREACHABLE


async def test_a_malformed_chunk() -> None:
    async with agent_for(malformed_reply()) as (agent, _):
        seen, caught = await failure(agent)
    assert caught.code == RunErrorCode.UPSTREAM_INVALID
    assert caught.message == "malformed chunk: not JSON"
    assert deltas(seen) == "Hel"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (text_reply("cut short", finish=False, done=False), "ended before [DONE]"),
        (text_reply("cut short", finish=False, done=False, cut=True), "broke off"),
    ],
    ids=["ended", "cut"],
)
async def test_a_stream_that_ends_early(reply: Reply, message: str) -> None:
    async with agent_for(reply) as (agent, _):
        seen, caught = await failure(agent)
    assert caught.code == RunErrorCode.UPSTREAM_INVALID
    assert message in caught.message
    assert deltas(seen) == "cut short"


async def test_cancelling_a_run_closes_the_upstream_request_at_once() -> None:
    slow = text_reply(" ".join(["tok"] * 100), delay_s=0.1)
    async with agent_for(slow) as (agent, llm):
        seen: list[object] = []

        async def emit(payload: object) -> None:
            seen.append(payload)
            if len(seen) == 2:
                scope.cancel()

        with trio.CancelScope() as scope:
            await agent.run(RunContext("run_1", "thr_1", "alice", "hi"), emit)
        cancelled_at = trio.current_time()
        with trio.fail_after(1):
            await llm.wait_for(lambda m: m.aborted == 1)
        # The mock notices the close while waiting for its next chunk (100 ms away).
        assert trio.current_time() - cancelled_at < 0.2
    assert deltas(seen) == "tok tok"


# -- building ----------------------------------------------------------------------


def test_the_key_is_in_no_repr() -> None:
    opts = AgentOptions(llm=LLMOptions(base_url="http://127.0.0.1:1/v1", model="m", api_key=KEY))
    agent = load_agent("openai", opts)
    assert isinstance(agent, OpenAIAgent)
    assert agent.name == "openai"
    assert KEY not in repr(opts)
    assert KEY not in repr(agent)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "m"}, "needs --llm-base-url"),
        ({"base_url": "http://127.0.0.1:1/v1"}, "needs --llm-model"),
        ({"base_url": "http://x/v1", "model": "m", "tools": ("nope",)}, "--llm-tools"),
    ],
)
def test_factory_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentLoadError, match=message):
        openai_agent(AgentOptions(llm=LLMOptions(**fields)))


def test_usage_is_summed_over_requests() -> None:
    assert _add_usage(None, None) is None
    assert _add_usage(None, {"a": 1}) == {"a": 1}
    assert _add_usage({"a": 1, "b": "x"}, {"a": 2, "b": "y", "c": 3}) == {"a": 3, "b": "y", "c": 3}


# -- through a real server ---------------------------------------------------------


async def test_a_client_sees_the_streamed_run(e2e: E2E, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    calls = [("word_count", '{"text": "hello big world"}')]
    replies = (tool_reply(calls), text_reply("That is three words.", delay_s=0.01))
    async with open_mock_llm(scripted(*replies)) as llm:
        settings = e2e.settings(
            agent="openai",
            llm_base_url=llm.base_url,
            llm_model="mock-model",
            llm_api_key_file=str(key_file),
        )
        async with e2e.server(settings) as live, live.chat() as chat:
            frames = await chat.run_to_end("count: hello big world")
    for frame in frames:
        validate_server_event(frame)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "agent_started"
    assert frames[0]["agent"] == "openai"
    assert kinds[1:3] == ["tool_executing", "tool_completed"]
    assert frames[1]["tool_name"] == frames[2]["tool_name"] == "word_count"
    assert frames[2]["results"] == {"words": 3}
    assert set(kinds[3:-1]) == {"agent_delta"}
    assert kinds[-1] == "agent_completed"
    text = "".join(f["delta"] for f in frames if f["type"] == "agent_delta")
    assert text == frames[-1]["result"]["text"] == "That is three words."
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert llm.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_a_client_sees_the_upstream_error_code(e2e: E2E) -> None:
    async with open_mock_llm(answer_responder(tokens=2, delay_s=0)) as llm:
        settings = e2e.settings(agent="openai", llm_base_url=llm.base_url + "/nope", llm_model="m")
        async with e2e.server(settings) as live, live.chat() as chat:
            frames = await chat.run_to_end()
    assert frames[-1]["type"] == "agent_error"
    assert frames[-1]["error"] == {
        "code": "upstream_status",
        "message": "the model server answered 404 Not Found",
    }
