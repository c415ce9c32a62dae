"""The per-connection event emitter: stamps, checks and encodes outbound events once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from isolation import request_scoped

from ..core._events import RunEvent, RunPayload, ServerEvent, encode_json, serialize
from ..core._state import ConnectionState, EventRefused

__all__ = ["EventEmitter", "InvalidEvent", "Record", "Write", "encode_run_event"]

#: The connection's outbound path: (the connection the frames were stamped for, frames,
#: whether writing may wait until the calling task is about to wait, the thread-log
#: ticket the frames must wait for).
Write = Callable[[str, Sequence[bytes], bool, int], Awaitable[None]]
#: Appends a run event to its thread's log: its frame and ticket (the session's).
Record = Callable[[RunEvent], tuple[bytes, int]]


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
    """

    connection_id: str
    state: ConnectionState
    write: Write
    log: logging.Logger
    #: Without it (tests of the emitter alone) events are encoded and not logged.
    record: Record | None = None

    async def send_event(self, event: ServerEvent) -> None:
        """Send a connection-level event; returns once it is written.

        Cancellation: the frame stays queued and goes out.
        """
        await self.write(self.connection_id, (serialize(event).encode(),), False, 0)

    async def emit_run(self, run_id: str, payload: RunPayload, *, deferred: bool = False) -> None:
        """Send the next event of ``run_id``; returns once it is written.

        With ``deferred``, returns once it is queued: the caller writes before it waits
        (a run's task, see ``app/session/_session.py``), unless the queue is long.

        Raises :class:`EventRefused` (logged as an isolation violation) for a run
        this connection does not own, :class:`InvalidEvent` for a payload that is
        not JSON (nothing used then). Cancellation: the frame stays queued, with its
        sequence number, and goes out.
        """
        try:
            event = self.state.prepare(run_id, payload)
        except EventRefused:
            self.log.error(
                "isolation violation: refused %s for run %s on connection %s",
                payload.TYPE,
                run_id,
                self.connection_id,
            )
            raise
        try:
            if self.record is None:
                frame, ticket = encode_run_event(event).encode(), 0
            else:
                frame, ticket = self.record(event)
        except UnicodeEncodeError as exc:  # a lone surrogate from an agent
            raise InvalidEvent(f"{payload.TYPE} payload is not UTF-8: {exc}") from None
        self.state.commit(event)
        await self.write(self.connection_id, (frame,), deferred, ticket)


def encode_run_event(event: RunEvent, wire: dict[str, Any] | None = None) -> str:
    """The JSON text of a run event (or of ``wire``, its JSON object with more fields);
    :class:`InvalidEvent` if its payload is not JSON.

    Encoding it to UTF-8 may still fail (a lone surrogate): the caller encodes.
    """
    try:
        return serialize(event) if wire is None else encode_json(wire)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{event.payload.TYPE} payload is not JSON: {exc}") from None
