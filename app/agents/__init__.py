"""What a run does: the ``Agent`` interface, the run's ``RunContext``, and the agents
that ship (``echo``). An agent gets its run and an ``emit`` bound to that run, never the
server, the session or another connection.
"""

from ._agent import Agent as Agent
from ._agent import AgentLoadError as AgentLoadError
from ._agent import AgentOptions as AgentOptions
from ._agent import EchoAgent as EchoAgent
from ._agent import Emit as Emit
from ._agent import RunContext as RunContext
from ._agent import load_agent as load_agent

__all__ = [
    "Agent",
    "AgentLoadError",
    "AgentOptions",
    "EchoAgent",
    "Emit",
    "RunContext",
    "load_agent",
]
