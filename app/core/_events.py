"""Server -> client events of chat.v1: frozen values and their JSON form, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, ClassVar, Final

import attrs
import orjson

from ._codes import PROTOCOL

__all__ = [
    "AGENT_PAYLOADS",
    "TERMINAL_PAYLOADS",
    "AgentCompleted",
    "AgentDelta",
    "AgentError",
    "AgentStarted",
    "AgentThinking",
    "AuthOk",
    "ConnectionReady",
    "DuplicateMessage",
    "ErrorEvent",
    "HistoryPage",
    "MessageAccepted",
    "Pong",
    "Resumed",
    "RunCancelled",
    "RunEvent",
    "RunPayload",
    "ServerEvent",
    "ThreadList",
    "ToolCompleted",
    "ToolExecuting",
    "dump_json",
    "encode_json",
    "run_wire",
    "serialize",
    "serialize_frame",
    "to_wire",
]

JSON = Any


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Built once: ``json.dumps`` with options builds an encoder per call, and so does
# ``JSONEncoder.encode`` for its C encoder (a third of a small event's cost). No
# circular-reference markers: a dict of them would outlive a failed call; the C
# encoder's recursion limit stops a cycle instead.
_C_ENCODE: Final = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False
    )
)


def encode_json(value: JSON) -> str:
    """Compact, strict JSON (no NaN/Infinity); raises TypeError/ValueError if not JSON."""
    if _C_ENCODE is None:  # pragma: no cover - CPython has the C encoder
        return _ENCODER.encode(value)
    try:
        return "".join(_C_ENCODE(value, 0))
    except RecursionError:
        raise ValueError("a circular reference, or nested too deep") from None


# Subclasses (a str or int enum), datetimes and dataclasses are refused by orjson with
# these, so the standard encoder decides them as it always has.
_ORJSON_STRICT: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def dump_json(value: JSON) -> bytes:
    """``encode_json(value).encode()``, a tenth of the cost on the hot path (orjson).

    The same bytes for the JSON values events carry (strings, integers, booleans, null,
    lists, objects; a float may be spelt differently, as ``1e16`` for ``1e+16``) and the
    same errors: what orjson refuses (a set, a lone surrogate, an integer past 64 bits, a
    key that is not a string, nesting past 255) goes through :func:`encode_json`, which
    encodes it or says why not (``UnicodeEncodeError`` for a lone surrogate). orjson
    writes NaN and the infinities as ``null``, so any ``null`` in its output is checked
    the same way. Left apart: orjson also writes an ``enum.Enum`` member or a UUID by
    value, where the standard encoder refuses them.
    """
    try:
        out = orjson.dumps(value, option=_ORJSON_STRICT)
    except TypeError:  # orjson.JSONEncodeError
        return encode_json(value).encode()
    if b"null" in out:
        return encode_json(value).encode()
    return out


# Run payloads: what happens inside a run. The session wraps each in a RunEvent.


@attrs.frozen
class AgentStarted:
    TYPE: ClassVar[str] = "agent_started"
    agent: str
    client_id: str | None = None

    def wire(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"type": self.TYPE, "agent": self.agent}
        if self.client_id is not None:
            out["client_id"] = self.client_id
        return out


@attrs.frozen
class AgentThinking:
    TYPE: ClassVar[str] = "agent_thinking"
    thought: str

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "thought": self.thought}


@attrs.frozen
class AgentDelta:
    """A piece of the answer's text, streamed as the model produces it."""

    TYPE: ClassVar[str] = "agent_delta"
    delta: str

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "delta": self.delta}


@attrs.frozen
class ToolExecuting:
    TYPE: ClassVar[str] = "tool_executing"
    tool_name: str
    tool_input: JSON

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "tool_name": self.tool_name, "tool_input": self.tool_input}


@attrs.frozen
class ToolCompleted:
    TYPE: ClassVar[str] = "tool_completed"
    tool_name: str
    results: JSON

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "tool_name": self.tool_name, "results": self.results}


@attrs.frozen
class AgentCompleted:
    TYPE: ClassVar[str] = "agent_completed"
    result: JSON

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "result": self.result}


@attrs.frozen
class AgentError:
    TYPE: ClassVar[str] = "agent_error"
    code: str
    message: str

    def wire(self) -> dict[str, JSON]:
        # The wire nests the error so clients read it like an ``error`` event.
        return {"type": self.TYPE, "error": {"code": self.code, "message": self.message}}


@attrs.frozen
class RunCancelled:
    TYPE: ClassVar[str] = "run_cancelled"
    reason: str

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "reason": self.reason}


RunPayload = (
    AgentStarted
    | AgentThinking
    | AgentDelta
    | ToolExecuting
    | ToolCompleted
    | AgentCompleted
    | AgentError
    | RunCancelled
)
#: Payloads an agent may emit itself; start and end of a run belong to the session.
AGENT_PAYLOADS: Final = (AgentThinking, AgentDelta, ToolExecuting, ToolCompleted)
TERMINAL_PAYLOADS: Final = (AgentCompleted, AgentError, RunCancelled)


@attrs.frozen
class RunEvent:
    """A run payload stamped with its run, thread and per-run sequence number (from 1).

    ``thread_seq`` numbers every event of the thread (from 1, across runs and
    connections); the thread log gives it just before the event is encoded (0: none).
    """

    run_id: str
    thread_id: str
    seq: int
    payload: RunPayload
    thread_seq: int = 0

    @property
    def terminal(self) -> bool:
        return isinstance(self.payload, TERMINAL_PAYLOADS)

    def wire(self) -> dict[str, JSON]:
        out = run_wire(self.run_id, self.thread_id, self.seq, self.payload)
        if self.thread_seq:
            out["thread_seq"] = self.thread_seq
        return out


def run_wire(run_id: str, thread_id: str, seq: int, payload: RunPayload) -> dict[str, JSON]:
    """The JSON object of a run event (without ``thread_seq``): :meth:`RunEvent.wire`
    without the event, for the emitter, which sends each event and keeps none."""
    out = payload.wire()
    out["run_id"] = run_id
    out["thread_id"] = thread_id
    out["seq"] = seq
    return out


@attrs.frozen
class MessageAccepted:
    """A ``user_message`` a thread accepted, as its log keeps it (history, resume, and
    the user's other connections following the thread; not sent to its sender)."""

    TYPE: ClassVar[str] = "message_accepted"
    run_id: str
    thread_id: str
    thread_seq: int
    text: str
    client_id: str | None = None

    def wire(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "type": self.TYPE,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "thread_seq": self.thread_seq,
            "text": self.text,
        }
        if self.client_id is not None:
            out["client_id"] = self.client_id
        return out


# Connection-level events.


@attrs.frozen
class ConnectionReady:
    TYPE: ClassVar[str] = "connection_ready"
    connection_id: str
    user_id: str
    limits: Mapping[str, int | float]
    protocol: str = PROTOCOL
    #: The thread store's epoch: changes only when the store lost data.
    epoch: str | None = None

    def wire(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "type": self.TYPE,
            "connection_id": self.connection_id,
            "user_id": self.user_id,
            "limits": dict(self.limits),
            "protocol": self.protocol,
        }
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out


@attrs.frozen
class ErrorEvent:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | None = None
    field: str | None = None

    def wire(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"type": self.TYPE, "code": self.code, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.field is not None:
            out["field"] = self.field
        return out


@attrs.frozen
class Pong:
    TYPE: ClassVar[str] = "pong"

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE}


@attrs.frozen
class AuthOk:
    TYPE: ClassVar[str] = "auth_ok"
    expires_at: float

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "expires_at": self.expires_at}


@attrs.frozen
class HistoryPage:
    """The answer to ``history``: events as sent (oldest first), and whether older remain."""

    TYPE: ClassVar[str] = "history_page"
    thread_id: str
    events: tuple[Mapping[str, JSON], ...]
    has_more: bool

    def wire(self) -> dict[str, JSON]:
        return {
            "type": self.TYPE,
            "thread_id": self.thread_id,
            "events": [dict(event) for event in self.events],
            "has_more": self.has_more,
        }


@attrs.frozen
class ThreadList:
    """The answer to ``threads``: ``{thread_id, last_seq, updated_at}``, most recent first."""

    TYPE: ClassVar[str] = "thread_list"
    threads: tuple[Mapping[str, JSON], ...]

    def wire(self) -> dict[str, JSON]:
        return {"type": self.TYPE, "threads": [dict(item) for item in self.threads]}


@attrs.frozen
class Resumed:
    """The end of a ``resume``'s replay: live events follow; or why nothing was recovered."""

    TYPE: ClassVar[str] = "resumed"
    thread_id: str
    recovered: bool
    #: The last ``thread_seq`` of the replay (when recovered).
    last_seq: int | None = None
    #: A :class:`~app.core._codes.ResumeFailure` (when not recovered).
    reason: str | None = None
    #: The thread's runs still running (when recovered): the others are over, even
    #: one whose end the log does not hold (cut by a crash).
    live_runs: tuple[str, ...] | None = None

    def wire(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "type": self.TYPE,
            "thread_id": self.thread_id,
            "recovered": self.recovered,
        }
        if self.last_seq is not None:
            out["last_seq"] = self.last_seq
        if self.reason is not None:
            out["reason"] = self.reason
        if self.live_runs is not None:
            out["live_runs"] = list(self.live_runs)
        return out


@attrs.frozen
class DuplicateMessage:
    """A ``user_message`` whose ``client_id`` the thread already accepted: no new run."""

    TYPE: ClassVar[str] = "duplicate_message"
    thread_id: str
    client_id: str
    #: The run the first copy started.
    run_id: str

    def wire(self) -> dict[str, JSON]:
        return {
            "type": self.TYPE,
            "thread_id": self.thread_id,
            "client_id": self.client_id,
            "run_id": self.run_id,
        }


ServerEvent = (
    RunEvent
    | ConnectionReady
    | ErrorEvent
    | Pong
    | AuthOk
    | MessageAccepted
    | HistoryPage
    | ThreadList
    | Resumed
    | DuplicateMessage
)


def to_wire(event: ServerEvent) -> dict[str, JSON]:
    """The JSON object of an event, as sent."""
    return event.wire()


def serialize(event: ServerEvent) -> str:
    """The text frame of an event; raises TypeError/ValueError if a payload is not JSON."""
    return encode_json(event.wire())


def serialize_frame(event: ServerEvent) -> bytes:
    """:func:`serialize` as UTF-8 bytes (:func:`dump_json`); raises as it, and
    ``UnicodeEncodeError`` for a lone surrogate."""
    return dump_json(event.wire())
