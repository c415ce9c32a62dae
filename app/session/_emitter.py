"""The per-connection event emitter: stamps, checks and encodes outbound events once.

It sees every run event, so it also counts runs started and how they ended, and times
each turn (``user_message`` received to the terminal event queued) into the server's
:class:`~app.services._metrics.Metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs

from isolation import request_scoped

from ..core._events import (
    TERMINAL_PAYLOADS,
    AgentCompleted,
    AgentError,
    AgentStarted,
    RunCancelled,
    RunPayload,
    ServerEvent,
    dump_json,
    run_wire,
    serialize_frame,
)
from ..core._state import ConnectionState, EventRefused
from ..services._metrics import Metrics

__all__ = ["EventEmitter", "Flush", "InvalidEvent", "Record", "Write", "encode_run_wire"]

# Payloads the metrics count: a run's start and its ends (a set: one lookup per event).
_COUNTED: Final = frozenset({AgentStarted, *TERMINAL_PAYLOADS})

#: The connection's outbound path: queues (the connection the frames were stamped for,
#: frames, whether writing may wait for the scheduler's next pass (a run's events), the
#: thread-log ticket the frames must wait for); True when the caller must await
#: :data:`Flush` before going on. Not a coroutine: a run's events are queued without one.
Write = Callable[[str, Sequence[bytes], bool, int], bool]
#: Returns once what is queued is written (or the connection is closing).
Flush = Callable[[], Awaitable[None]]


async def _written() -> None:
    """A :data:`Flush` for an outbound path that writes as it queues."""


#: Appends a run event to its thread's log: (thread, run, payload type, wire object)
#: to its frame and ticket (the session's).
Record = Callable[[str, str, str, dict[str, Any]], tuple[bytes, int]]


class InvalidEvent(Exception):
    """An event whose payload cannot be sent (not JSON, or not allowed here)."""


@request_scoped
@attrs.define
class EventEmitter:
    """Turns events into frames for exactly one connection and hands them to ``write``.

    Every frame is stamped with this connection's id; run events are numbered by this
    connection's :class:`ConnectionState`, which refuses runs it does not own. ``write``
    (the session's) checks the stamp again before the transport gets the frame
    (defence in depth). Each event is serialized and encoded once.

    ``metrics`` is the server's (the session passes its lifecycle's).
    """

    connection_id: str
    state: ConnectionState
    write: Write
    log: logging.Logger
    #: Without it (tests of the emitter alone) events are encoded and not logged.
    record: Record | None = None
    flush: Flush = attrs.field(default=_written, kw_only=True)
    metrics: Metrics = attrs.field(factory=Metrics, kw_only=True)
    # When each run's user_message was received (time.perf_counter: a fifth of
    # trio.current_time's cost), until its terminal event; None while no run is timed,
    # so an idle connection keeps no dict.
    _received: dict[str, float] | None = attrs.field(default=None, init=False)

    def run_received(self, run_id: str) -> None:
        """Note that the message starting ``run_id`` was just received: its turn starts now."""
        if self._received is None:
            self._received = {}
        self._received[run_id] = time.perf_counter()

    async def send_event(self, event: ServerEvent) -> None:
        """Send a connection-level event; returns once it is written.

        Cancellation: the frame stays queued and goes out.
        """
        if self.write(self.connection_id, (serialize_frame(event),), False, 0):
            await self.flush()

    async def emit_run(self, run_id: str, payload: RunPayload, *, deferred: bool = False) -> None:
        """Send the next event of ``run_id``; returns once it is written.

        With ``deferred``, returns once it is queued: it is written at the scheduler's
        next pass (see ``app/session/_session.py``), unless the queue is long.

        Raises as :meth:`queue_run`. Cancellation: the frame stays queued, with its
        sequence number, and goes out.
        """
        if self.queue_run(run_id, payload, deferred=deferred):
            await self.flush()

    def queue_run(self, run_id: str, payload: RunPayload, *, deferred: bool = False) -> bool:
        """Queue the next event of ``run_id``: :meth:`emit_run` up to the wait, for a
        caller that awaits :attr:`flush` itself when this returns True.

        Raises :class:`EventRefused` (logged as an isolation violation) for a run
        this connection does not own, :class:`InvalidEvent` for a payload that is
        not JSON (nothing used then).
        """
        state = self.state
        try:
            # No RunEvent per event: its thread and number go straight into the wire object.
            thread_id, seq = state.next_event(run_id, payload)
        except EventRefused:
            self.metrics.isolation_violations += 1
            self.log.error(
                "isolation violation: refused %s for run %s on connection %s",
                payload.TYPE,
                run_id,
                self.connection_id,
                extra={"connection_id": self.connection_id, "run_id": run_id},
            )
            raise
        wire = run_wire(run_id, thread_id, seq, payload)
        try:
            if self.record is None:
                frame, ticket = encode_run_wire(payload.TYPE, wire), 0
            else:
                frame, ticket = self.record(thread_id, run_id, payload.TYPE, wire)
        except UnicodeEncodeError as exc:  # a lone surrogate from an agent
            raise InvalidEvent(f"{payload.TYPE} payload is not UTF-8: {exc}") from None
        state.advance(run_id, seq, payload)
        if type(payload) in _COUNTED:
            self._count(run_id, payload)
        return self.write(self.connection_id, (frame,), deferred, ticket)

    def _count(self, run_id: str, payload: RunPayload) -> None:
        metrics = self.metrics
        if isinstance(payload, AgentStarted):
            metrics.runs_started += 1
            if self._received is None or run_id not in self._received:
                self.run_received(run_id)  # no receive time noted: time it from here
            return
        if isinstance(payload, AgentCompleted):
            metrics.runs_completed += 1
        elif isinstance(payload, RunCancelled):
            counts = metrics.cancelled_by_reason
            counts[payload.reason] = counts.get(payload.reason, 0) + 1
        else:
            assert isinstance(payload, AgentError)  # the last of TERMINAL_PAYLOADS
            counts = metrics.failed_by_code
            counts[payload.code] = counts.get(payload.code, 0) + 1
        received = self._received
        if received is not None and run_id in received:
            metrics.turn_seconds.observe(time.perf_counter() - received.pop(run_id))
            if not received:
                self._received = None


def encode_run_wire(kind: str, wire: dict[str, Any]) -> bytes:
    """The frame (UTF-8 JSON) of a run event's ``wire`` object (of payload type
    ``kind``); :class:`InvalidEvent` if its payload is not JSON, ``UnicodeEncodeError``
    if it holds a lone surrogate (the caller says which event).
    """
    try:
        return dump_json(wire)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{kind} payload is not JSON: {exc}") from None
