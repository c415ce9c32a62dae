"""``--agent openai``: a model behind any OpenAI-compatible chat-completions endpoint.

OpenAI, vLLM, llama.cpp's server, Ollama (``/v1``)... The agent streams the answer
(``stream: true``), sends each network read's text to the client as one ``agent_delta``,
runs the tool calls the model makes through its :class:`ToolRegistry` (``tool_executing``
/ ``tool_completed``) and continues the conversation with their results, up to
``max_tool_rounds`` times. Its result is ``{"text", "model", "usage"?}``, ``text`` being
every delta of the run joined.

One ``httpx.AsyncClient`` (a pool of keep-alive connections) serves every run of the
process: a run does not pay a TCP (or TLS) handshake per request. ``serve()`` closes it
through :meth:`OpenAIAgent.aclose`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
from httpx import codes

from ..core._codes import RunErrorCode
from ..core._events import AgentDelta, ToolCompleted, ToolExecuting, encode_json
from ._agent import AgentFailure, AgentLoadError, AgentOptions, Emit, RunContext
from ._stream import SSEDecoder, StreamError, ToolCall, Turn
from ._tools import ToolRegistry, load_tools, parse_arguments

__all__ = ["LOGGER_NAME", "OpenAIAgent", "openai_agent"]

JSON = Any
LOGGER_NAME: Final = "trio_enclave.openai"
#: How much of an error response's body is read (for the log only).
ERROR_BODY_BYTES: Final = 2048


@attrs.frozen
class OpenAIAgent:
    """Answers with a chat-completions model; see the module docstring.

    Immutable and shared by every run; the client's pool is its only moving part.
    """

    client: httpx.AsyncClient = attrs.field(repr=False, eq=False)
    model: str
    tools: ToolRegistry = attrs.Factory(ToolRegistry)
    system_prompt: str | None = None
    max_tool_rounds: int = 8
    #: The session sends the thread's earlier turns as ``RunContext.history``.
    uses_history: bool = True
    log: logging.Logger = attrs.field(
        factory=lambda: logging.getLogger(LOGGER_NAME), repr=False, eq=False
    )
    name: str = "openai"

    async def aclose(self) -> None:
        """Close the connection pool. Cancellation: the sockets are closed all the same."""
        await self.client.aclose()

    def messages(self, run: RunContext) -> list[dict[str, JSON]]:
        """The conversation sent for ``run``: system prompt, history, the user's text."""
        out: list[dict[str, JSON]] = []
        if self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
        out.extend({"role": role, "content": content} for role, content in run.history)
        out.append({"role": "user", "content": run.text})
        return out

    async def run(self, run: RunContext, emit: Emit) -> Any:
        """Stream the model's answer, running its tool calls; return the whole answer.

        Raises :class:`AgentFailure` (``upstream_*``, ``too_many_tool_rounds``).
        Cancellation: the request in flight is closed at once (its connection too).
        """
        messages = self.messages(run)
        text: list[str] = []
        model = self.model
        usage: dict[str, JSON] | None = None
        for round_ in range(self.max_tool_rounds + 1):
            turn = await self._stream(messages, emit)
            text.extend(turn.text)
            model = turn.model or model
            usage = _add_usage(usage, turn.usage)
            calls = turn.tool_calls()
            if not calls:
                result: dict[str, JSON] = {"text": "".join(text), "model": model}
                if usage is not None:
                    result["usage"] = usage
                return result
            if round_ == self.max_tool_rounds:
                break
            messages.append(_assistant_message(turn, calls))
            for call in calls:
                tool_input = parse_arguments(call.arguments)
                await emit(ToolExecuting(tool_name=call.name, tool_input=tool_input))
                outcome = await self.tools.call(call.name, call.arguments)
                await emit(ToolCompleted(tool_name=call.name, results=outcome.result))
                content = encode_json(outcome.result)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        raise AgentFailure(
            RunErrorCode.TOO_MANY_TOOL_ROUNDS,
            f"the model was still calling tools after {self.max_tool_rounds} rounds",
        )

    def _body(self, messages: list[dict[str, JSON]]) -> dict[str, JSON]:
        body: dict[str, JSON] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        specs = self.tools.specs()
        if specs:
            body["tools"] = specs
        return body

    async def _stream(self, messages: list[dict[str, JSON]], emit: Emit) -> Turn:
        """One request: its text deltas go to ``emit`` as they arrive.

        Cancellation: leaving ``client.stream`` closes the response and its connection.
        """
        turn = Turn()
        decoder = SSEDecoder()
        try:
            async with self.client.stream(
                "POST", "chat/completions", json=self._body(messages)
            ) as response:
                if not response.is_success:
                    await self._log_error(response)
                    status = response.status_code
                    # The standard phrase, not the server's: nothing of the response leaks.
                    message = (
                        f"the model server answered {status} {codes.get_reason_phrase(status)}"
                    )
                    raise AgentFailure(RunErrorCode.UPSTREAM_STATUS, message.rstrip())
                # One delta per network read: the tokens that arrived together leave
                # together, and a slow client gets fewer, larger frames.
                async with _body(response) as chunks:
                    async for data in chunks:
                        delta = "".join(turn.feed(event) for event in decoder.feed(data))
                        if delta:
                            await emit(AgentDelta(delta=delta))
                delta = "".join(turn.feed(event) for event in decoder.end())
                if delta:
                    await emit(AgentDelta(delta=delta))
        except httpx.TimeoutException as exc:
            if turn.done:  # the answer was whole; only the end of the body was late
                return turn
            message = f"the model server did not answer in time ({_kind(exc)})"
            raise AgentFailure(RunErrorCode.UPSTREAM_TIMEOUT, message) from None
        except httpx.ConnectError:
            raise AgentFailure(
                RunErrorCode.UPSTREAM_UNREACHABLE, "the model server cannot be reached"
            ) from None
        except httpx.TransportError as exc:  # reset, or the HTTP itself was malformed
            if turn.done:
                return turn
            message = f"the model server's response broke off ({_kind(exc)})"
            raise AgentFailure(RunErrorCode.UPSTREAM_INVALID, message) from None
        except StreamError as exc:
            raise AgentFailure(RunErrorCode.UPSTREAM_INVALID, str(exc)) from None
        if not turn.finished:
            raise AgentFailure(
                RunErrorCode.UPSTREAM_INVALID, "the stream ended before [DONE] or a finish_reason"
            )
        return turn

    async def _log_error(self, response: httpx.Response) -> None:
        body = b""
        async with _body(response) as chunks:
            async for data in chunks:
                body += data
                if len(body) >= ERROR_BODY_BYTES:
                    break
        self.log.warning(
            "model server answered %d: %s",
            response.status_code,
            body[:ERROR_BODY_BYTES].decode(errors="replace"),
        )


@asynccontextmanager
async def _body(response: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """``response.aiter_bytes()``, left cleanly however the block ends.

    httpx's iterator is a chain of async generators, and one left suspended (the block
    raised or broke out) would be garbage collected later, with a warning from Trio for
    each. So: close the response (its connection too), then run the chain to its end,
    which comes at once.
    """
    chunks = response.aiter_bytes()
    try:
        yield chunks
    finally:
        await response.aclose()
        with contextlib.suppress(Exception):  # what the closed connection raises, if anything
            async for _ in chunks:
                pass


def _kind(exc: httpx.HTTPError) -> str:
    """``ReadTimeout`` → ``read timeout``: what failed, without the URL or any header."""
    name = type(exc).__name__
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip()


def _assistant_message(turn: Turn, calls: list[ToolCall]) -> dict[str, JSON]:
    return {
        "role": "assistant",
        "content": "".join(turn.text) or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }


def _add_usage(total: dict[str, JSON] | None, usage: JSON) -> dict[str, JSON] | None:
    """Token counts summed over the run's requests (other fields: the last one's)."""
    if not isinstance(usage, dict):
        return total
    if total is None:
        return dict(usage)
    out = dict(total)
    for key, value in usage.items():
        before = out.get(key)
        both_ints = isinstance(value, int) and isinstance(before, int)
        out[key] = before + value if both_ints else value
    return out


def openai_agent(options: AgentOptions, *, tools: ToolRegistry | None = None) -> OpenAIAgent:
    """Factory of ``--agent openai``, from ``options.llm``.

    ``tools`` replaces the registry that ``options.llm.tools`` names: a custom factory
    (``--agent mymodule:factory``) can return ``openai_agent(options, tools=ToolRegistry(
    (WORD_COUNT, my_tool)))``. Raises :class:`AgentLoadError` for missing or bad settings.
    """
    llm = options.llm
    if not llm.base_url:
        raise AgentLoadError("--agent openai needs --llm-base-url")
    if not llm.model:
        raise AgentLoadError("--agent openai needs --llm-model")
    if tools is None:
        try:
            tools = load_tools(llm.tools)
        except ValueError as exc:
            raise AgentLoadError(f"--llm-tools: {exc}") from None
    headers = {"Authorization": f"Bearer {llm.api_key}"} if llm.api_key else {}
    client = httpx.AsyncClient(
        base_url=llm.base_url,
        headers=headers,
        # read: the longest silence between two pieces of a response; pool: a run waits
        # for a free connection as long as its own deadline allows.
        timeout=httpx.Timeout(
            connect=llm.connect_timeout_s,
            read=llm.read_timeout_s,
            write=llm.read_timeout_s,
            pool=None,
        ),
        limits=httpx.Limits(
            max_connections=llm.max_connections, max_keepalive_connections=llm.max_connections
        ),
        # No proxy, CA or .netrc credentials picked up from the environment.
        trust_env=False,
    )
    return OpenAIAgent(
        client=client,
        model=llm.model,
        tools=tools,
        system_prompt=llm.system_prompt,
        max_tool_rounds=llm.max_tool_rounds,
    )
