"""What a run does: the ``Agent`` interface, the run's ``RunContext``, and the agents
that ship (``echo``, and ``openai`` for any OpenAI-compatible chat-completions server).
An agent gets its run and an ``emit`` bound to that run, never the server, the session
or another connection.

``OpenAIAgent`` and ``openai_agent`` load httpx when first used (``import app`` does not).
"""

import typing as _typing

from ._agent import Agent as Agent
from ._agent import AgentFailure as AgentFailure
from ._agent import AgentLoadError as AgentLoadError
from ._agent import AgentOptions as AgentOptions
from ._agent import EchoAgent as EchoAgent
from ._agent import Emit as Emit
from ._agent import LLMOptions as LLMOptions
from ._agent import RunContext as RunContext
from ._agent import load_agent as load_agent
from ._tools import CLOCK as CLOCK
from ._tools import WORD_COUNT as WORD_COUNT
from ._tools import Tool as Tool
from ._tools import ToolError as ToolError
from ._tools import ToolOutcome as ToolOutcome
from ._tools import ToolRegistry as ToolRegistry
from ._tools import load_tools as load_tools

if _typing.TYPE_CHECKING:
    from ._openai import OpenAIAgent as OpenAIAgent
    from ._openai import openai_agent as openai_agent


def __getattr__(name: str) -> _typing.Any:
    # The OpenAI agent's module imports httpx: loaded on first use.
    if name in ("OpenAIAgent", "openai_agent"):
        from . import _openai

        return getattr(_openai, name)
    raise AttributeError(f"module 'app.agents' has no attribute {name!r}")


__all__ = [
    "CLOCK",
    "WORD_COUNT",
    "Agent",
    "AgentFailure",
    "AgentLoadError",
    "AgentOptions",
    "EchoAgent",
    "Emit",
    "LLMOptions",
    "OpenAIAgent",
    "RunContext",
    "Tool",
    "ToolError",
    "ToolOutcome",
    "ToolRegistry",
    "load_agent",
    "load_tools",
    "openai_agent",
]
