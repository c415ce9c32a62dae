"""Server -> client events of chat.v1: frozen values and their JSON form, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs

from ._codes import PROTOCOL

__all__ = [
    "AGENT_PAYLOADS",
    "TERMINAL_PAYLOADS",
    "AgentCompleted",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "AuthOk",
    "ConnectionReady",
    "ErrorEvent",
    "Pong",
    "RunCancelled",
    "RunEvent",
    "RunPayload",
    "ServerEvent",
    "ToolCompleted",
    "ToolExecuting",
    "encode_json",
    "serialize",
    "to_wire",
]

JSON = Any


def encode_json(value: JSON) -> str:
    """Compact, strict JSON (no NaN/Infinity); raises TypeError/ValueError if not JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# Run payloads: what happens inside a run. The session wraps each in a RunEvent.


@attrs.frozen
class AgentStarted:
    TYPE: ClassVar[str] = "agent_started"
    agent: str
    client_id: str | None = None


@attrs.frozen
class AgentThinking:
    TYPE: ClassVar[str] = "agent_thinking"
    thought: str


@attrs.frozen
class ToolExecuting:
    TYPE: ClassVar[str] = "tool_executing"
    tool_name: str
    tool_input: JSON


@attrs.frozen
class ToolCompleted:
    TYPE: ClassVar[str] = "tool_completed"
    tool_name: str
    results: JSON


@attrs.frozen
class AgentCompleted:
    TYPE: ClassVar[str] = "agent_completed"
    result: JSON


@attrs.frozen
class AgentError:
    TYPE: ClassVar[str] = "agent_error"
    code: str
    message: str


@attrs.frozen
class RunCancelled:
    TYPE: ClassVar[str] = "run_cancelled"
    reason: str


RunPayload = (
    AgentStarted
    | AgentThinking
    | ToolExecuting
    | ToolCompleted
    | AgentCompleted
    | AgentError
    | RunCancelled
)
#: Payloads an agent may emit itself; start and end of a run belong to the session.
AGENT_PAYLOADS: Final = (AgentThinking, ToolExecuting, ToolCompleted)
TERMINAL_PAYLOADS: Final = (AgentCompleted, AgentError, RunCancelled)


@attrs.frozen
class RunEvent:
    """A run payload stamped with its run, thread and per-run sequence number (from 1)."""

    run_id: str
    thread_id: str
    seq: int
    payload: RunPayload

    @property
    def terminal(self) -> bool:
        return isinstance(self.payload, TERMINAL_PAYLOADS)


# Connection-level events.


@attrs.frozen
class ConnectionReady:
    TYPE: ClassVar[str] = "connection_ready"
    connection_id: str
    user_id: str
    limits: Mapping[str, int | float]
    protocol: str = PROTOCOL


@attrs.frozen
class ErrorEvent:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | None = None
    field: str | None = None


@attrs.frozen
class Pong:
    TYPE: ClassVar[str] = "pong"


@attrs.frozen
class AuthOk:
    TYPE: ClassVar[str] = "auth_ok"
    expires_at: float


ServerEvent = RunEvent | ConnectionReady | ErrorEvent | Pong | AuthOk

_OPTIONAL: Final = frozenset({"client_id", "ref", "field"})


def _fields(value: Any) -> dict[str, JSON]:
    if isinstance(value, AgentError):
        # The wire nests the error so clients read it like an ``error`` event.
        return {"type": value.TYPE, "error": {"code": value.code, "message": value.message}}
    out: dict[str, JSON] = {"type": value.TYPE}
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        if item is None and field.name in _OPTIONAL:
            continue
        out[field.name] = dict(item) if isinstance(item, Mapping) else item
    return out


def to_wire(event: ServerEvent) -> dict[str, JSON]:
    """The JSON object of an event, as sent."""
    if isinstance(event, RunEvent):
        out = _fields(event.payload)
        out["run_id"] = event.run_id
        out["thread_id"] = event.thread_id
        out["seq"] = event.seq
        return out
    return _fields(event)


def serialize(event: ServerEvent) -> str:
    """The text frame of an event; raises TypeError/ValueError if a payload is not JSON."""
    return encode_json(to_wire(event))
