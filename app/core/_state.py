"""The per-connection state machine of chat.v1: plain Python, no I/O, no clock of its own.

The Trio layer feeds it client frames (with the current time) and carries out the
actions it returns; everything that decides what happens on a connection lives here:
the run table, each run's sequence numbers and cancel reason, the rate budget and the
drain flag. The Trio layer keeps no second table: what it needs to stop a run (its
cancel scope) is attached to the run here and handed back in :class:`StopRun`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import attrs

from isolation import request_scoped

from ._codes import CancelReason, CloseCode, CloseReason, ErrorCode
from ._events import (
    TERMINAL_PAYLOADS,
    ErrorEvent,
    Pong,
    RunPayload,
)
from ._messages import (
    Authenticate,
    CancelRun,
    HistoryRequest,
    Ping,
    ProtocolError,
    ResumeRequest,
    ThreadsRequest,
    UserMessage,
    parse_client_message,
)

__all__ = [
    "RUN_NOT_FOUND",
    "Action",
    "CancelElsewhere",
    "Close",
    "ConnectionState",
    "EventRefused",
    "Lookup",
    "Reauthenticate",
    "Reply",
    "RunLimits",
    "StartRun",
    "StopRun",
    "TokenBucket",
]


@attrs.frozen
class Reply:
    """Send this connection-level event."""

    event: ErrorEvent | Pong


@attrs.frozen
class StartRun:
    """Start the agent for this (already registered) run."""

    run_id: str
    thread_id: str
    message: UserMessage


@attrs.frozen
class StopRun:
    """Cancel this run through ``handle`` (what :meth:`ConnectionState.attach` gave).

    The run then ends with ``run_cancelled`` and the reason the state recorded.
    """

    run_id: str
    handle: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class Reauthenticate:
    """Verify this token; same subject moves the deadline, another closes 1008."""

    token: str = attrs.field(repr=False)


@attrs.frozen
class Close:
    """Close the connection with this code and reason."""

    code: CloseCode
    reason: CloseReason


@attrs.frozen
class Lookup:
    """Answer this question about the user's threads (it needs the thread store)."""

    request: HistoryRequest | ThreadsRequest | ResumeRequest


@attrs.frozen
class CancelElsewhere:
    """``cancel`` of a run this connection does not have: perhaps one of the same user's
    runs on a thread this connection follows (its connection left); else ``run_not_found``.
    """

    run_id: str


Action = Reply | StartRun | StopRun | Reauthenticate | Close | Lookup | CancelElsewhere


class EventRefused(Exception):
    """An event that does not belong to this connection's runs; an isolation violation."""


@attrs.frozen
class RunLimits:
    max_runs: int = 4
    max_message_bytes: int = 65_536
    rate_per_s: float = 20.0
    rate_burst: int = 40
    rate_abuse_limit: int = 40


@attrs.define
class TokenBucket:
    """Classic token bucket; ``now`` is passed in so tests control time."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=-1.0)
    updated: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now if self.updated is None else max(now, self.updated)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@attrs.define
class _Run:
    thread_id: str
    seq: int = 0
    cancel_reason: CancelReason | None = None
    handle: Any = None  # the I/O layer's way to stop the run (a cancel scope)


#: The message of ``run_not_found``: the same for another connection's run.
RUN_NOT_FOUND = "no such run"


@request_scoped
@attrs.define
class ConnectionState:
    """What one connection knows: its runs and their sequence numbers, its rate budget.

    Owned by one connection's session; never shared. A run_id of another
    connection is simply unknown here, so it gets the same ``run_not_found`` as
    an id that never existed.
    """

    limits: RunLimits
    #: Tests pass their own; by default, see :meth:`_new_id`.
    new_run_id: Callable[[], str] | None = None
    new_thread_id: Callable[[], str] | None = None
    _draining: bool = attrs.field(default=False, init=False)
    _runs: dict[str, _Run] = attrs.field(factory=dict, init=False)
    _bucket: TokenBucket = attrs.field(init=False)
    _limited_in_a_row: int = attrs.field(default=0, init=False)
    _id_prefix: str | None = attrs.field(default=None, init=False)
    _ids_given: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._bucket = TokenBucket(self.limits.rate_per_s, self.limits.rate_burst)

    @property
    def active_runs(self) -> frozenset[str]:
        return frozenset(self._runs)

    @property
    def has_runs(self) -> bool:
        return bool(self._runs)

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """The server is shutting down: no run starts from now on."""
        self._draining = True

    def attach(self, run_id: str, handle: Any) -> None:
        """Remember how the I/O layer stops ``run_id``; handed back in :class:`StopRun`."""
        self._runs[run_id].handle = handle

    def cancel_all(self, reason: CancelReason) -> list[StopRun]:
        """Stop every run not already stopping, recording ``reason`` (the server's drain)."""
        stops = []
        for run_id, run in self._runs.items():
            if run.cancel_reason is None:
                run.cancel_reason = reason
                stops.append(StopRun(run_id, run.handle))
        return stops

    def stop(self, run_id: str, reason: CancelReason) -> StopRun | None:
        """Stop ``run_id`` for ``reason`` unless it is unknown or already stopping."""
        run = self._runs.get(run_id)
        if run is None or run.cancel_reason is not None:
            return None
        run.cancel_reason = reason
        return StopRun(run_id, run.handle)

    def thread_of(self, run_id: str) -> str | None:
        """The thread of ``run_id``, if this connection has that run."""
        run = self._runs.get(run_id)
        return None if run is None else run.thread_id

    def cancel_reason(self, run_id: str) -> CancelReason | None:
        """Why ``run_id`` was stopped, if it was; the first reason wins."""
        run = self._runs.get(run_id)
        return None if run is None else run.cancel_reason

    def discard(self, run_id: str) -> None:
        """Forget ``run_id`` (it ended without a terminal event: the connection is over)."""
        self._runs.pop(run_id, None)

    def receive_text(self, text: str, now: float) -> list[Action]:
        """Handle one client text frame received at ``now`` (seconds, any monotonic clock)."""
        limit = self.limits.max_message_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            return [Close(CloseCode.MESSAGE_TOO_BIG, CloseReason.MESSAGE_TOO_BIG)]
        if not self._bucket.take(now):
            self._limited_in_a_row += 1
            if self._limited_in_a_row >= self.limits.rate_abuse_limit:
                return [Close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED)]
            return [_error(ErrorCode.RATE_LIMITED, "too many messages; slow down", _ref(text))]
        if self._bucket.tokens >= 1.0:
            # Only a frame with tokens to spare ends the streak: a flood that lets one frame
            # through per refill keeps the bucket empty and is still closed, however slowly
            # this server gets to its frames.
            self._limited_in_a_row = 0
        message = parse_client_message(text)
        if isinstance(message, ProtocolError):
            return [Reply(ErrorEvent(message.code, message.message, message.ref, message.field))]
        if isinstance(message, UserMessage):
            return [self._start(message)]
        if isinstance(message, CancelRun):
            return [self._cancel(message.run_id)]
        if isinstance(message, Ping):
            return [Reply(Pong())]
        if isinstance(message, Authenticate):
            return [Reauthenticate(message.token)]
        return [Lookup(message)]

    def _start(self, message: UserMessage) -> Action:
        ref = message.client_id
        if self._draining:
            return _error(ErrorCode.SHUTTING_DOWN, "server is shutting down", ref)
        if len(self._runs) >= self.limits.max_runs:
            return _error(
                ErrorCode.TOO_MANY_RUNS,
                f"at most {self.limits.max_runs} runs at once on a connection",
                ref,
            )
        new_run_id = self.new_run_id
        run_id = self._new_id("run") if new_run_id is None else new_run_id()
        while run_id in self._runs:  # pragma: no cover - ids are not reused
            run_id = self._new_id("run") if new_run_id is None else new_run_id()
        thread_id = message.thread_id
        if thread_id is None:
            new_thread_id = self.new_thread_id
            thread_id = self._new_id("thr") if new_thread_id is None else new_thread_id()
        self._runs[run_id] = _Run(thread_id=thread_id)
        return StartRun(run_id, thread_id, message)

    def _new_id(self, kind: str) -> str:
        """``kind``, a random part drawn once per connection (96 bits), a counter: as
        unguessable across connections as a random id each, unique within one, for one
        system call per connection instead of one per run."""
        prefix = self._id_prefix
        if prefix is None:
            prefix = self._id_prefix = secrets.token_urlsafe(12)
        self._ids_given += 1
        return f"{kind}_{prefix}{self._ids_given:x}"

    def _cancel(self, run_id: str) -> Action:
        run = self._runs.get(run_id)
        if run is None:
            return CancelElsewhere(run_id)
        stop = self.stop(run_id, CancelReason.CANCELLED_BY_CLIENT)
        return stop or _error(ErrorCode.RUN_NOT_FOUND, RUN_NOT_FOUND, run_id)

    def next_event(self, run_id: str, payload: RunPayload) -> tuple[str, int]:
        """The thread and sequence number of the next event of ``run_id`` carrying
        ``payload``; nothing changes until :meth:`advance`.

        Raises :class:`EventRefused` for a run this connection does not have
        (unknown, another connection's, or already ended).
        """
        run = self._runs.get(run_id)
        if run is None:
            raise EventRefused(f"event {payload.TYPE!r} for a run this connection does not own")
        return run.thread_id, run.seq + 1

    def advance(self, run_id: str, seq: int, payload: RunPayload) -> None:
        """Record that the event ``seq`` of ``run_id`` (carrying ``payload``) was queued; a
        terminal event ends its run. Raises :class:`EventRefused` out of sequence."""
        run = self._runs.get(run_id)
        if run is None or seq != run.seq + 1:
            raise EventRefused(f"event {payload.TYPE!r} is out of sequence")
        run.seq = seq
        if isinstance(payload, TERMINAL_PAYLOADS):
            del self._runs[run_id]


def _ref(text: str) -> str | None:
    # A dropped message is still named, so a client knows which one to resend.
    message = parse_client_message(text)
    if isinstance(message, UserMessage):
        return message.client_id
    if isinstance(message, CancelRun):
        return message.run_id
    if isinstance(message, ProtocolError):
        return message.ref
    return None


def _error(code: ErrorCode, message: str, ref: str | None = None) -> Reply:
    return Reply(ErrorEvent(code, message, ref))
