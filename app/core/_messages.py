"""Client -> server messages of chat.v1: parsing and validation, no I/O.

Every input string yields either a message or a :class:`ProtocolError`; nothing
else escapes :func:`parse_client_message`. The rules here are the only rules:
there is no environment switch anywhere in validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ._codes import ErrorCode

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_THREADS_LIMIT",
    "ID_PATTERN",
    "MAX_PAGE",
    "MAX_SEQ",
    "MAX_TEXT_CHARS",
    "MAX_TOKEN_CHARS",
    "Authenticate",
    "CancelRun",
    "ClientMessage",
    "HistoryRequest",
    "Ping",
    "ProtocolError",
    "ResumeRequest",
    "ThreadsRequest",
    "UserMessage",
    "parse_client_message",
]

#: Longest token accepted in an ``auth`` message (the handshake's limit too).
MAX_TOKEN_CHARS: Final = 8192

#: run_id, thread_id and client_id: 1-128 characters of a log-safe alphabet.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_TEXT_CHARS: Final = 32_768
#: Largest page of ``history`` and ``threads``, and their defaults.
MAX_PAGE: Final = 200
DEFAULT_HISTORY_LIMIT: Final = 50
DEFAULT_THREADS_LIMIT: Final = 20
#: Largest ``thread_seq`` a client may name (JSON numbers above 2**53 lose precision).
MAX_SEQ: Final = 2**53


@attrs.frozen
class UserMessage:
    """``user_message``: starts a run."""

    text: str
    thread_id: str | None = None
    client_id: str | None = None


@attrs.frozen
class CancelRun:
    """``cancel``: cancels one of this connection's runs."""

    run_id: str


@attrs.frozen
class Ping:
    """``ping``: answered with ``pong``."""


@attrs.frozen
class Authenticate:
    """``auth``: a fresh token for the same subject moves the connection's deadline."""

    token: str = attrs.field(repr=False)


@attrs.frozen
class HistoryRequest:
    """``history``: a page of a thread's events, oldest first, before ``before``."""

    thread_id: str
    before: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@attrs.frozen
class ThreadsRequest:
    """``threads``: the user's threads, most recently updated first."""

    limit: int = DEFAULT_THREADS_LIMIT


@attrs.frozen
class ResumeRequest:
    """``resume``: the events of a thread after ``after``, then its live events."""

    thread_id: str
    after: int
    epoch: str | None = None


ClientMessage = (
    UserMessage | CancelRun | Ping | Authenticate | HistoryRequest | ThreadsRequest | ResumeRequest
)


@attrs.frozen
class ProtocolError:
    """A client mistake, answered with an ``error`` event; the connection stays open."""

    code: ErrorCode
    message: str
    ref: str | None = None
    field: str | None = None


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _string(obj: Mapping[str, Any], name: str, *, max_chars: int, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise _Invalid(name, f"field '{name}' is required")
        return None
    if not isinstance(value, str):
        raise _Invalid(name, f"field '{name}' must be a string")
    if not value:
        raise _Invalid(name, f"field '{name}' must not be empty")
    if len(value) > max_chars:
        raise _Invalid(name, f"field '{name}' is longer than {max_chars} characters")
    return value


def _identifier(obj: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = _string(obj, name, max_chars=128, required=required)
    if value is not None and not ID_PATTERN.fullmatch(value):
        raise _Invalid(name, f"field '{name}' must match {ID_PATTERN.pattern}")
    return value


def _integer(
    obj: Mapping[str, Any],
    name: str,
    *,
    low: int,
    high: int,
    default: int | None = None,
    required: bool = False,
) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise _Invalid(name, f"field '{name}' is required")
        return default
    # As in JSON Schema: 2.0 is an integer, true is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(name, f"field '{name}' must be an integer")
    if not low <= value <= high:
        raise _Invalid(name, f"field '{name}' must be {low}..{high}")
    return value


def _history(obj: Mapping[str, Any]) -> HistoryRequest:
    thread_id = _identifier(obj, "thread_id", required=True)
    assert thread_id is not None
    limit = _integer(obj, "limit", low=1, high=MAX_PAGE, default=DEFAULT_HISTORY_LIMIT)
    assert limit is not None
    before = _integer(obj, "before", low=1, high=MAX_SEQ)
    return HistoryRequest(thread_id=thread_id, before=before, limit=limit)


def _threads(obj: Mapping[str, Any]) -> ThreadsRequest:
    limit = _integer(obj, "limit", low=1, high=MAX_PAGE, default=DEFAULT_THREADS_LIMIT)
    assert limit is not None
    return ThreadsRequest(limit=limit)


def _resume(obj: Mapping[str, Any]) -> ResumeRequest:
    thread_id = _identifier(obj, "thread_id", required=True)
    assert thread_id is not None
    after = _integer(obj, "after", low=0, high=MAX_SEQ, required=True)
    assert after is not None
    epoch = _string(obj, "epoch", max_chars=128, required=False)
    return ResumeRequest(thread_id=thread_id, after=after, epoch=epoch)


def _user_message(obj: Mapping[str, Any]) -> UserMessage:
    text = _string(obj, "text", max_chars=MAX_TEXT_CHARS, required=True)
    assert text is not None
    return UserMessage(
        text=text,
        thread_id=_identifier(obj, "thread_id", required=False),
        client_id=_identifier(obj, "client_id", required=False),
    )


def _cancel(obj: Mapping[str, Any]) -> CancelRun:
    run_id = _identifier(obj, "run_id", required=True)
    assert run_id is not None
    return CancelRun(run_id=run_id)


def _ping(obj: Mapping[str, Any]) -> Ping:
    return Ping()


def _auth(obj: Mapping[str, Any]) -> Authenticate:
    token = _string(obj, "token", max_chars=MAX_TOKEN_CHARS, required=True)
    assert token is not None
    return Authenticate(token=token)


_Parser = Callable[[Mapping[str, Any]], ClientMessage]
# type -> (allowed fields, parser); one table so the schema test can mirror it.
_PARSERS: Final[Mapping[str, tuple[frozenset[str], _Parser]]] = {
    "user_message": (frozenset({"type", "text", "thread_id", "client_id"}), _user_message),
    "cancel": (frozenset({"type", "run_id"}), _cancel),
    "ping": (frozenset({"type"}), _ping),
    "auth": (frozenset({"type", "token"}), _auth),
    "history": (frozenset({"type", "thread_id", "before", "limit"}), _history),
    "threads": (frozenset({"type", "limit"}), _threads),
    "resume": (frozenset({"type", "thread_id", "after", "epoch"}), _resume),
}

#: Message types a client may send.
CLIENT_TYPES: Final = tuple(_PARSERS)


def _has_lone_surrogate(value: Any) -> bool:
    # A loop, not recursion: json.loads accepts nesting deeper than Python frames left
    # to a recursive walk (a RecursionError here once closed the connection 1011).
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _ref_of(obj: Mapping[str, Any]) -> str | None:
    for key in ("client_id", "run_id"):
        value = obj.get(key)
        if isinstance(value, str) and ID_PATTERN.fullmatch(value):
            return value
    return None


#: Built once: ``json.loads`` with hooks builds a new decoder on every call.
_DECODE: Final = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
).decode


def parse_client_message(text: str) -> ClientMessage | ProtocolError:
    """Parse one text frame. Never raises; bad input becomes a :class:`ProtocolError`."""
    try:
        obj = _DECODE(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: deeply nested arrays; ValueError covers huge ints too.
        detail = str(exc) if isinstance(exc, ValueError) else "nesting too deep"
        return ProtocolError(ErrorCode.INVALID_JSON, f"invalid JSON: {detail}"[:200])
    # Lone surrogates (raw, from an in-process transport, or spelled as JSON
    # escapes) could never be carried back in a UTF-8 frame.
    if ("\\u" in text or not text.isascii()) and _has_lone_surrogate(obj):
        return ProtocolError(ErrorCode.INVALID_JSON, "invalid JSON: lone surrogate in a string")
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object", None, "")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolError(
            ErrorCode.INVALID_MESSAGE, "field 'type' must be a string", _ref_of(obj), "type"
        )
    entry = _PARSERS.get(kind)
    if entry is None:
        shown = kind if len(kind) <= 64 else kind[:64] + "..."
        return ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown!r}", _ref_of(obj)
        )
    allowed, parse = entry
    for key in obj:
        if key not in allowed:
            shown = key if len(key) <= 64 else key[:64] + "..."
            return ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"unknown field {shown!r} in {kind}",
                _ref_of(obj),
                shown,
            )
    try:
        return parse(obj)
    except _Invalid as exc:
        return ProtocolError(ErrorCode.INVALID_MESSAGE, exc.message, _ref_of(obj), exc.field)
