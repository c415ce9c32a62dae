"""Agents: what a run does. Pluggable through a small interface.

An agent receives the run's :class:`RunContext` and an ``emit`` function bound
to that run -- never the server, the session or other connections.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ..core._codes import RunErrorCode
from ..core._events import AgentDelta, AgentThinking, ToolCompleted, ToolExecuting

if TYPE_CHECKING:  # the timer is the server's; an agent only sleeps on it
    from ..services._timer import Timer

__all__ = [
    "Agent",
    "AgentFailure",
    "AgentLoadError",
    "AgentOptions",
    "EchoAgent",
    "Emit",
    "LLMOptions",
    "RunContext",
    "load_agent",
]

AgentPayload = AgentThinking | AgentDelta | ToolExecuting | ToolCompleted


@attrs.frozen
class RunContext:
    """What an agent knows about the run it serves."""

    run_id: str
    thread_id: str
    user_id: str
    text: str
    client_id: str | None = None
    #: Earlier turns of the thread, oldest first: ("user" | "assistant", content) pairs.
    history: tuple[tuple[str, str], ...] = ()
    timer: Timer | None = attrs.field(default=None, repr=False, eq=False)

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """``trio.sleep``, woken by the server's timer: about a quarter of the CPU.

        Returns the timer's own sleep for the caller to await (a coroutine of ours in
        between would be resumed on every wake: 1.5 % of a turn whose agent waits).
        Cancellation: as ``trio.sleep`` (the run's cancel scope stops it).
        """
        if self.timer is None:
            return trio.sleep(seconds)  # noqa: ASYNC105 - awaited by the caller
        return self.timer.sleep(seconds)


class Emit(Protocol):
    async def __call__(self, payload: AgentPayload, /) -> None:
        """Send one event of this run. Blocks while the client is not reading."""
        ...


class Agent(Protocol):
    """A stateless service shared by all runs; per-run state lives in ``run``'s frame."""

    @property
    def name(self) -> str: ...

    async def run(self, run: RunContext, emit: Emit) -> Any:
        """Do the work of one run and return its JSON ``result``.

        Cancellation: the run's cancel scope is cancelled when the client sends
        ``cancel``, when the run times out or when the connection ends; the agent
        should let ``trio.Cancelled`` propagate. Raising :class:`AgentFailure` ends
        the run with ``agent_error`` of its code and message; any other exception
        with ``agent_error`` (code ``agent_failed``).
        """
        ...


class AgentFailure(Exception):
    """Ends the run with ``agent_error`` of this code and message (both sent to the client).

    For failures the client should tell apart (the model server timed out, answered an
    error status...). The message must hold nothing secret.
    """

    def __init__(self, code: RunErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@attrs.frozen(kw_only=True)
class LLMOptions:
    """How to reach an OpenAI-compatible chat-completions server (``--agent openai``)."""

    base_url: str | None = None
    model: str | None = None
    #: Sent as ``Authorization: Bearer``; never logged nor shown in a repr.
    api_key: str | None = attrs.field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    #: Longest wait for the next bytes of a response (between two chunks).
    read_timeout_s: float = 60.0
    system_prompt: str | None = None
    #: ``builtin`` (word_count, clock) and ``module:attr`` of tools; empty: no tools.
    tools: tuple[str, ...] = ("builtin",)
    max_tool_rounds: int = 8
    max_connections: int = 100


@attrs.frozen
class AgentOptions:
    """Settings an agent factory receives."""

    delay_s: float = 0.0
    llm: LLMOptions = LLMOptions()


class AgentLoadError(ValueError):
    """The ``--agent`` spec cannot be loaded."""


@attrs.frozen
class EchoAgent:
    """The built-in agent: thinks, counts the words of the text with a tool, completes."""

    delay_s: float = 0.0
    name: str = "echo"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        words = len(run.text.split())
        delay_s = self.delay_s
        # A wait before each event and one before the result, inline: a helper coroutine
        # per wait costs as much as the wait's own bookkeeping.
        for event in (
            AgentThinking(thought="I will count the words of your message."),
            ToolExecuting(tool_name="word_count", tool_input={"text": run.text}),
            ToolCompleted(tool_name="word_count", results={"words": words}),
        ):
            if delay_s > 0:
                await run.sleep(delay_s)
            await emit(event)
        if delay_s > 0:
            await run.sleep(delay_s)
        return {"text": run.text, "words": words}


def echo(options: AgentOptions) -> Agent:
    """Factory of the built-in ``echo`` agent."""
    return EchoAgent(delay_s=options.delay_s)


def load_agent(spec: str, options: AgentOptions) -> Agent:
    """Build the agent named by ``spec``: ``echo``, ``openai`` or ``module:attr`` of a factory.

    The factory is called once at startup with ``options`` and returns an object
    with a ``name`` and an async ``run(run, emit)``; it may also have an async
    ``aclose()``, which ``serve()`` awaits when it stops.
    """
    if spec == "echo":
        return echo(options)
    if spec == "openai":  # imported here: only this agent needs an HTTP client
        from ._openai import openai_agent

        return openai_agent(options)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentLoadError(f"--agent {spec!r}: expected 'echo' or 'module:attr'")
    try:
        factory: Callable[[AgentOptions], Agent] = getattr(
            importlib.import_module(module_name), attr
        )
    except (ImportError, AttributeError) as exc:
        raise AgentLoadError(f"--agent {spec!r}: {exc}") from None
    agent = factory(options)
    if not isinstance(getattr(agent, "name", None), str) or not callable(
        getattr(agent, "run", None)
    ):
        raise AgentLoadError(f"--agent {spec!r}: factory did not return an agent")
    return agent
