"""The per-connection event emitter: stamps, checks and queues outbound events."""

from __future__ import annotations

import logging

import attrs
import trio

from isolation import request_scoped

from ._events import RunEvent, RunPayload, ServerEvent, serialize
from ._state import ConnectionState, EventRefused

__all__ = ["EventEmitter", "Flush", "InvalidEvent", "Outbound"]


class InvalidEvent(Exception):
    """An event whose payload cannot be sent (not JSON, or not allowed here)."""


@attrs.frozen
class Outbound:
    """One serialized event, addressed to the connection it was stamped for."""

    connection_id: str
    text: str


@attrs.frozen
class Flush:
    """Queued behind everything already queued; ``done`` is set when the sender reaches it."""

    done: trio.Event = attrs.field(factory=trio.Event)


@request_scoped
@attrs.define
class EventEmitter:
    """Turns events into frames for exactly one connection.

    Every event is stamped with this connection's id; run events are numbered by
    this connection's :class:`ConnectionState`, which refuses runs it does not own.
    The sender checks the stamp again before writing (defence in depth).
    """

    connection_id: str
    state: ConnectionState
    channel: trio.MemorySendChannel[Outbound | Flush]
    log: logging.Logger

    async def send_event(self, event: ServerEvent) -> None:
        """Queue a connection-level event. Blocks while the queue is full.

        Cancellation: if cancelled, the event was not queued.
        """
        await self.channel.send(Outbound(self.connection_id, serialize(event)))

    async def emit_run(self, run_id: str, payload: RunPayload) -> None:
        """Queue the next event of ``run_id``. Blocks while the queue is full.

        Raises :class:`EventRefused` (logged as an isolation violation) for a run
        this connection does not own, :class:`InvalidEvent` for a payload that is
        not JSON. Cancellation: if cancelled, the event was not queued and its
        sequence number was not used.
        """
        event, item = self._stamp(run_id, payload)
        await self.channel.send(item)
        self.state.commit(event)

    def emit_run_nowait(self, run_id: str, payload: RunPayload) -> bool:
        """Queue the next event of ``run_id`` if the queue has room, without yielding.

        Returns False, having used nothing (no sequence number, no slot), when the
        queue is full. Raises like :meth:`emit_run`.
        """
        event, item = self._stamp(run_id, payload)
        try:
            self.channel.send_nowait(item)
        except trio.WouldBlock:
            return False
        self.state.commit(event)
        return True

    def _stamp(self, run_id: str, payload: RunPayload) -> tuple[RunEvent, Outbound]:
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
            text = serialize(event)
            text.encode()  # a lone surrogate from an agent cannot go out as UTF-8
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"{payload.TYPE} payload is not JSON: {exc}") from None
        return event, Outbound(self.connection_id, text)

    async def flush(self) -> None:
        """Return once everything queued before this call has been written.

        Cancellation: stops waiting; queued events stay queued.
        """
        marker = Flush()
        await self.channel.send(marker)
        await marker.done.wait()
