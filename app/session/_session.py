"""One connection's session: its nursery owns its context, state, emitter and runs.

This is the thin Trio layer around :class:`ConnectionState`: it reads frames,
carries out the actions the state machine returns, runs agents as child tasks,
and keeps the connection's clocks (idle, token expiry, keepalive, drain).
When :func:`run_session` returns, nothing of the connection remains.

Tasks: the connection's own task reads; one clock task keeps every deadline of the
connection and waits for the server's drain; each run is a task. Frames are written by
the task that produces them (the queue is the transport's): the reader writes each at
once, a run writes what it queued when its agent is about to wait and when it ends, so
the events a run produces in one step leave in one write. Only when the peer does not
take them does a task wait for the write: the run itself past :data:`DEFER_BYTES`
queued, else a flushing task started for it.
"""

from __future__ import annotations

import contextlib
import math
import random
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Final, TypeVar

import trio

from isolation import request_scoped

from ..agents._agent import RunContext
from ..auth._context import UserContext
from ..auth._tokens import AuthError
from ..core._codes import CancelReason, CloseCode, CloseReason, ErrorCode, RunErrorCode
from ..core._events import (
    AGENT_PAYLOADS,
    AgentCompleted,
    AgentError,
    AgentStarted,
    AuthOk,
    ConnectionReady,
    ErrorEvent,
    RunCancelled,
    RunPayload,
)
from ..core._state import (
    Action,
    Close,
    ConnectionState,
    EventRefused,
    Reauthenticate,
    Reply,
    RunLimits,
    StartRun,
    StopRun,
)
from ..services._services import ServerLifecycle, Services
from ..services._timer import Alarm
from ._emitter import EventEmitter, InvalidEvent
from ._transport import SendTimeout, Transport, TransportClosed, UnsupportedFrame

__all__ = ["CLOCK_TICK_S", "CLOSE_TIMEOUT_S", "DEFER_BYTES", "run_session"]

#: How long the closing handshake may take before the session gives up on it.
CLOSE_TIMEOUT_S = 5.0
#: The clock's wake-ups fall on this grid (seconds): 10,000 connections' keepalives
#: then wake in batches. A deadline is met up to this late.
CLOCK_TICK_S: Final = 0.05
#: Queued bytes past which a run's event is written before ``emit`` returns.
DEFER_BYTES: Final = 65_536

T = TypeVar("T")


def run_session(
    transport: Transport,
    context: UserContext,
    services: Services,
    lifecycle: ServerLifecycle,
) -> Coroutine[Any, Any, None]:
    """Serve one accepted, authenticated connection until it ends (await it).

    Returns when the peer leaves or the server closes the connection (idle,
    token expiry, limits, drain). Cancellation: every task of the connection is
    cancelled and no close frame is sent (the caller cancels when the peer is
    already gone). Unexpected errors are logged and close the connection 1011.
    """
    # The session's own coroutine, not one around it: one frame less per connection.
    return _Session(transport, context, services, lifecycle).run()


@request_scoped
class _Session:
    # Slots: 10,000 idle connections keep 10,000 of these.
    __slots__ = (
        "_alarm",
        "_close",
        "_connection_id",
        "_context",
        "_emitter",
        "_expires_at",
        "_flushing",
        "_last_seen",
        "_lifecycle",
        "_log",
        "_nursery",
        "_peer_left",
        "_runs_idle",
        "_send_timeout_s",
        "_services",
        "_state",
        "_transport",
    )

    def __init__(
        self,
        transport: Transport,
        context: UserContext,
        services: Services,
        lifecycle: ServerLifecycle,
    ) -> None:
        s = services.settings
        self._transport = transport
        self._context = context
        self._connection_id = context.connection_id
        self._services = services
        self._lifecycle = lifecycle
        self._log = services.log
        self._send_timeout_s = s.send_timeout_s
        self._state = ConnectionState(
            RunLimits(
                max_runs=s.max_runs,
                max_message_bytes=s.max_message_bytes,
                rate_per_s=s.rate_per_s,
                rate_burst=s.rate_burst,
                rate_abuse_limit=s.rate_abuse_limit,
            )
        )
        self._emitter = EventEmitter(
            self._connection_id, self._state, self._write, self._log, metrics=lifecycle.metrics
        )
        self._runs_idle: trio.Event | None = None  # made by the drain, set by the last run
        self._flushing = False  # a flusher task writes what a run left queued
        self._close: Close | None = None
        self._peer_left = False
        self._nursery: trio.Nursery | None = None  # its cancel scope ends the connection
        # The clocks: plain times read by the clock task, which sleeps until the earliest.
        self._last_seen = trio.current_time()
        self._expires_at = self._deadline_for(context.expires_at)
        self._alarm = Alarm()  # wakes the clock when a deadline moves earlier

    def _deadline_for(self, expires_at: float) -> float:
        remaining = expires_at + self._services.settings.leeway_s - self._services.wall_clock()
        return trio.current_time() + remaining if math.isfinite(remaining) else math.inf

    async def run(self) -> None:
        # A bug in any task of the connection ends the nursery with it: logged, 1011,
        # and nothing of it reaches another connection.
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._emitter.send_event(
                    ConnectionReady(
                        connection_id=self._connection_id,
                        user_id=self._context.user_id,
                        limits=self._services.settings.limits(),
                    )
                )
                nursery.start_soon(self._clock)
                await self._reader()
                nursery.cancel_scope.cancel()
        except Exception:
            self._log.exception(
                "internal error on connection %s",
                self._connection_id,
                extra={"connection_id": self._connection_id},
            )
            self._request_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL_ERROR)
        finally:
            self._nursery = None
            await self._close_transport()

    def _cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _request_close(self, code: CloseCode, reason: CloseReason) -> None:
        if self._close is None:
            self._close = Close(code, reason)
            if reason is CloseReason.RATE_LIMITED:
                # Otherwise a flood reconnects at once with a fresh budget.
                self._lifecycle.subjects.penalize(self._context.user_id, trio.current_time())
        self._cancel()

    def _peer_gone(self) -> None:
        self._peer_left = True
        self._cancel()

    async def _close_transport(self) -> None:
        if self._close is None or self._peer_left:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            with contextlib.suppress(TransportClosed):
                await self._transport.close(int(self._close.code), str(self._close.reason))

    # -- the outbound path ---------------------------------------------------

    async def _write(self, connection_id: str, frames: Sequence[bytes], deferred: bool) -> None:
        """Queue ``frames`` and write them within ``send_timeout_s``; any task may call.

        ``deferred`` (a run's events): return once queued, unless :data:`DEFER_BYTES`
        are waiting; the run writes before it waits. Cancellation: the frames stay
        queued in the transport and go out.
        """
        if connection_id != self._connection_id:
            self._lifecycle.metrics.isolation_violations += 1
            self._log.error(
                "isolation violation: frame for connection %s refused on %s",
                connection_id,
                self._connection_id,
            )
            return
        transport = self._transport
        try:
            transport.queue(frames)
        except TransportClosed:
            self._peer_gone()
            return
        if deferred and transport.immediate_writes and transport.backlog() < DEFER_BYTES:
            return
        await self._flush()

    async def _flush(self) -> None:
        """Wait until everything queued is written, within ``send_timeout_s``.

        A peer gone ends the session; a peer that does not read is closed 1008.
        Cancellation: what is not written stays queued.
        """
        try:
            await self._transport.flush(trio.current_time() + self._send_timeout_s)
        except TransportClosed:
            self._peer_gone()
        except SendTimeout:
            self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.SLOW_CONSUMER)

    def _write_queued(self) -> None:
        """Write what runs queued, without waiting; a task finishes what the peer left."""
        if not self._transport.write_now() and not self._flushing and self._nursery:
            self._flushing = True
            self._nursery.start_soon(self._flusher)

    async def _flusher(self) -> None:
        try:
            await self._flush()
        finally:
            self._flushing = False

    # -- the connection's own task: reading ----------------------------------

    async def _reader(self) -> None:
        transport, state = self._transport, self._state
        draining = self._lifecycle.draining
        while True:
            try:
                text = await transport.receive()
            except TransportClosed:
                self._peer_gone()
                return
            except UnsupportedFrame:
                self._request_close(CloseCode.UNSUPPORTED_DATA, CloseReason.BINARY_NOT_SUPPORTED)
                return
            now = self._last_seen = trio.current_time()
            # Seen here too, so no run starts after shutdown began.
            if draining.is_set() and not state.draining:
                state.begin_drain()
            for action in state.receive_text(text, now):
                await self._apply(action)

    async def _apply(self, action: Action) -> None:
        if isinstance(action, StartRun):
            self._start_run(action)
        elif isinstance(action, Reply):
            await self._emitter.send_event(action.event)
        elif isinstance(action, StopRun):
            action.handle.cancel()
        elif isinstance(action, Reauthenticate):
            await self._reauthenticate(action.token)
        else:
            self._request_close(action.code, action.reason)

    async def _reauthenticate(self, token: str) -> None:
        try:
            claims = self._services.verifier.verify(token, now=self._services.wall_clock())
        except AuthError as exc:
            await self._emitter.send_event(ErrorEvent(ErrorCode.INVALID_TOKEN, exc.detail))
            return
        if claims.subject != self._context.user_id:
            self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.SUBJECT_MISMATCH)
            return
        self._context = self._context.renewed(claims)
        self._expires_at = self._deadline_for(claims.expires_at)
        self._alarm.ring()  # the clock sleeps again until the new earliest deadline
        await self._emitter.send_event(AuthOk(expires_at=claims.expires_at))

    # -- the clock task ------------------------------------------------------

    async def _clock(self) -> None:
        """Keep the idle, expiry and keepalive deadlines; wait for the server's drain.

        One task for all of them: a task per clock costs every idle connection a few
        KiB and a scheduler entry. The reader only writes down when it last heard from
        the peer; the clock wakes at the earliest deadline (on the server's timer, to a
        :data:`CLOCK_TICK_S` grid so that wake-ups come in batches) and sleeps again if
        it moved.
        """
        s = self._services.settings
        transport = self._transport
        timer = self._lifecycle.timer
        alarm = self._alarm
        ping_s = s.ping_interval_s
        # The first ping at a random point of the first interval: connections opened
        # together (a restart, a reconnect storm, bench's 1,000 users) would otherwise
        # ping together every interval, 1,000 pings and pongs in one burst (bench attacks
        # saw the server at 85-100 % for half a second every 20 s).
        next_ping = trio.current_time() + ping_s * random.random() if transport.pings else math.inf
        pong: trio.Event | None = None
        pong_due = math.inf
        draining = self._lifecycle.draining
        while not draining.is_set():
            now = trio.current_time()
            idle_at = self._last_seen + s.idle_timeout_s
            if now >= self._expires_at:
                self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.TOKEN_EXPIRED)
                return
            if now >= idle_at:
                self._request_close(CloseCode.NORMAL, CloseReason.IDLE_TIMEOUT)
                return
            if pong is not None and pong.is_set():
                pong, pong_due = None, math.inf
            elif pong is not None and now >= pong_due:
                self._request_close(CloseCode.GOING_AWAY, CloseReason.PONG_TIMEOUT)
                return
            if pong is None and now + CLOCK_TICK_S >= next_ping:  # a ping may go a tick early
                try:
                    pong = transport.ping()
                except TransportClosed:
                    self._peer_gone()
                    return
                self._write_queued()
                # On the interval's own grid: a late wake-up does not push later pings.
                pong_due, next_ping = now + s.pong_timeout_s, max(next_ping + ping_s, now)
                continue
            wake = min(self._expires_at, idle_at, next_ping if pong is None else pong_due)
            await timer.sleep_until(
                math.ceil(wake / CLOCK_TICK_S) * CLOCK_TICK_S, unless=draining, alarm=alarm
            )
        await self._drain()

    async def _drain(self) -> None:
        state = self._state
        state.begin_drain()
        if state.has_runs:
            self._runs_idle = idle = trio.Event()
            with trio.move_on_at(self._lifecycle.grace_deadline):
                await idle.wait()
            for stop in state.cancel_all(CancelReason.SERVER_SHUTDOWN):
                stop.handle.cancel()
            with trio.move_on_after(self._send_timeout_s):
                await idle.wait()
        self._request_close(CloseCode.GOING_AWAY, CloseReason.SERVER_SHUTDOWN)

    # -- runs ----------------------------------------------------------------

    def _start_run(self, start: StartRun) -> None:
        settings = self._services.settings
        # The run's own scope carries its time limit too: one cancel scope per run.
        scope = trio.CancelScope(deadline=trio.current_time() + settings.run_timeout_s)
        self._state.attach(start.run_id, scope)
        self._emitter.run_received(start.run_id)  # the turn starts: its message was just read
        assert self._nursery is not None
        self._nursery.start_soon(self._run, start, scope)

    async def _run(self, start: StartRun, scope: trio.CancelScope) -> None:
        run_id = start.run_id
        emitter, state = self._emitter, self._state

        async def emit(payload: Any, /) -> None:
            if not isinstance(payload, AGENT_PAYLOADS):
                raise InvalidEvent(f"an agent cannot emit {type(payload).__name__}")
            await trio.lowlevel.checkpoint_if_cancelled()
            await emitter.emit_run(run_id, payload, deferred=True)

        run = RunContext(
            run_id=run_id,
            thread_id=start.thread_id,
            user_id=self._context.user_id,
            text=start.message.text,
            client_id=start.message.client_id,
            timer=self._lifecycle.timer,
        )
        terminal: RunPayload | None = None
        agent = self._services.agent
        started = AgentStarted(agent=agent.name, client_id=start.message.client_id)
        try:
            await emitter.emit_run(run_id, started, deferred=True)
            with scope:
                try:
                    result = await _before_each_wait(agent.run(run, emit), self._write_queued)
                    terminal = AgentCompleted(result=result)
                except (InvalidEvent, EventRefused) as exc:
                    terminal = AgentError(RunErrorCode.INVALID_EVENT, str(exc))
                except Exception:
                    self._log.exception(
                        "agent failed in run %s",
                        run_id,
                        extra={"connection_id": self._connection_id, "run_id": run_id},
                    )
                    terminal = AgentError(RunErrorCode.AGENT_FAILED, "the agent failed")
            reason = state.cancel_reason(run_id)
            if reason is not None:  # a cancel always records its reason before cancelling
                terminal = RunCancelled(reason=reason)
            elif terminal is None:  # the deadline expired
                terminal = AgentError(RunErrorCode.RUN_TIMEOUT, "the run took too long")
            try:
                await emitter.emit_run(run_id, terminal)
            except InvalidEvent as exc:
                await emitter.emit_run(run_id, AgentError(RunErrorCode.INVALID_RESULT, str(exc)))
        finally:
            state.discard(run_id)
            if self._runs_idle is not None and not state.has_runs:
                self._runs_idle.set()


@types.coroutine
def _before_each_wait(
    coro: Coroutine[Any, Any, T], before_wait: Callable[[], None]
) -> Generator[Any, Any, T]:
    """Run ``coro`` in the calling task, calling ``before_wait`` whenever it is about to
    yield to Trio (to wait, or at a checkpoint). What it yields, and what Trio sends or
    throws back (its cancellation included), pass through unchanged.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            trap = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        before_wait()
        try:
            value, error = (yield trap), None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # Trio's Cancelled included: the agent handles it
            value, error = None, exc
