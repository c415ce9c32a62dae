"""One connection's session: its nursery owns its context, state, emitter and runs.

This is the thin Trio layer around :class:`ConnectionState`: it reads frames,
carries out the actions the state machine returns, runs agents as child tasks,
and enforces the connection's clocks (idle, token expiry, keepalive, drain).
When :func:`run_session` returns, nothing of the connection remains.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from isolation import request_scoped

from ._agent import RunContext
from ._auth import AuthError
from ._codes import CancelReason, CloseCode, CloseReason, ErrorCode, RunErrorCode
from ._context import UserContext
from ._emitter import EventEmitter, Flush, InvalidEvent, Outbound
from ._events import (
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
from ._services import ServerLifecycle, Services
from ._state import (
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
from ._transport import Transport, TransportClosed, UnsupportedFrame

__all__ = ["BATCH_CHARS", "BATCH_FRAMES", "CLOSE_TIMEOUT_S", "run_session"]

#: How long the closing handshake may take before the session gives up on it.
CLOSE_TIMEOUT_S = 5.0
#: Bounds of one batch the sender writes at once: frames, and characters (about bytes).
BATCH_FRAMES: Final = 64
BATCH_CHARS: Final = 256 * 1024


async def run_session(
    transport: Transport,
    context: UserContext,
    services: Services,
    lifecycle: ServerLifecycle,
) -> None:
    """Serve one accepted, authenticated connection until it ends.

    Returns when the peer leaves or the server closes the connection (idle,
    token expiry, limits, drain). Cancellation: every task of the connection is
    cancelled and no close frame is sent (the caller cancels when the peer is
    already gone). Unexpected errors are logged and close the connection 1011.
    """
    await _Session(transport, context, services, lifecycle).run()


@request_scoped
class _Session:
    def __init__(
        self,
        transport: Transport,
        context: UserContext,
        services: Services,
        lifecycle: ServerLifecycle,
    ) -> None:
        s = services.settings
        self._transport = transport
        # Not isinstance(transport, BatchTransport): a runtime protocol check walks every
        # member of the protocol: 60 us per connection, 4 % of a connect/close cycle.
        send_many = getattr(transport, "send_many", None)
        self._send_many: Callable[[Sequence[str]], Awaitable[None]] | None = send_many
        self._context = context
        self._services = services
        self._lifecycle = lifecycle
        self._log = services.log
        self._state = ConnectionState(
            RunLimits(
                max_runs=s.max_runs,
                max_message_bytes=s.max_message_bytes,
                rate_per_s=s.rate_per_s,
                rate_burst=s.rate_burst,
                rate_abuse_limit=s.rate_abuse_limit,
            )
        )
        send, self._outbox = trio.open_memory_channel[Outbound | Flush](s.send_queue)
        self._emitter = EventEmitter(context.connection_id, self._state, send, self._log)
        self._runs: dict[str, tuple[trio.CancelScope, list[CancelReason]]] = {}
        self._runs_idle = trio.Event()
        self._runs_idle.set()
        self._close: Close | None = None
        self._peer_left = False
        self._cancel_scope = trio.CancelScope()
        self._idle = trio.CancelScope(deadline=trio.current_time() + s.idle_timeout_s)
        self._expiry = trio.CancelScope(deadline=self._deadline_for(context.expires_at))

    def _deadline_for(self, expires_at: float) -> float:
        remaining = expires_at + self._services.settings.leeway_s - self._services.wall_clock()
        return trio.current_time() + remaining if math.isfinite(remaining) else math.inf

    async def run(self) -> None:
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._sender)
                    await self._emitter.send_event(
                        ConnectionReady(
                            connection_id=self._context.connection_id,
                            user_id=self._context.user_id,
                            limits=self._services.settings.limits(),
                        )
                    )
                    nursery.start_soon(self._guard, self._reader, nursery)
                    nursery.start_soon(self._guard, self._watch)
                    if self._transport.pings:
                        nursery.start_soon(self._guard, self._keepalive)
        except Exception:
            self._log.exception("internal error on connection %s", self._context.connection_id)
            self._request_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL_ERROR)
        finally:
            self._outbox.close()
            await self._close_transport()

    async def _guard(self, task: Any, *args: Any) -> None:
        # A bug in one task closes this connection 1011; it never reaches other users.
        try:
            await task(*args)
        except Exception:
            self._log.exception("internal error on connection %s", self._context.connection_id)
            self._request_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL_ERROR)

    def _request_close(self, code: CloseCode, reason: CloseReason) -> None:
        if self._close is None:
            self._close = Close(code, reason)
            if reason is CloseReason.RATE_LIMITED:
                # Otherwise a flood reconnects at once with a fresh budget.
                self._lifecycle.subjects.penalize(self._context.user_id, trio.current_time())
        self._cancel_scope.cancel()

    def _peer_gone(self) -> None:
        self._peer_left = True
        self._cancel_scope.cancel()

    async def _close_transport(self) -> None:
        if self._close is None or self._peer_left:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            with contextlib.suppress(TransportClosed):
                await self._transport.close(int(self._close.code), str(self._close.reason))

    # -- tasks ---------------------------------------------------------------

    async def _sender(self) -> None:
        # One blocking receive, then whatever else is already queued (bounded), written
        # with one call: frames queued while the peer was busy leave in one write.
        outbox = self._outbox
        async for first in outbox:
            items = [first]
            size = len(first.text) if isinstance(first, Outbound) else 0
            while len(items) < BATCH_FRAMES and size < BATCH_CHARS:
                try:
                    item = outbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                items.append(item)
                size += len(item.text) if isinstance(item, Outbound) else 0
            batch: list[str] = []
            for item in items:
                if isinstance(item, Flush):
                    # Everything queued before the marker is written before it is set.
                    if batch and not await self._write(batch):
                        return
                    batch = []
                    item.done.set()
                elif item.connection_id != self._context.connection_id:
                    self._log.error(
                        "isolation violation: frame for connection %s refused on %s",
                        item.connection_id,
                        self._context.connection_id,
                    )
                else:
                    batch.append(item.text)
            if batch and not await self._write(batch):
                return

    async def _write(self, texts: list[str]) -> bool:
        """Write one batch within ``send_timeout_s``; False once the connection is over."""
        timeout = self._services.settings.send_timeout_s
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline) as scope:
            try:
                if self._send_many is not None:
                    await self._send_many(texts)
                else:
                    for text in texts:
                        await self._transport.send(text)
            except TransportClosed:
                self._peer_gone()
                return False
        # A transport may shield its writes from cancellation (Hypercorn does); a
        # write that only finished past the deadline is a slow consumer all the same.
        if scope.cancelled_caught or trio.current_time() > deadline:
            self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.SLOW_CONSUMER)
            return False
        return True

    async def _reader(self, nursery: trio.Nursery) -> None:
        idle_s = self._services.settings.idle_timeout_s
        while True:
            try:
                text = await self._transport.receive()
            except TransportClosed:
                self._peer_gone()
                return
            except UnsupportedFrame:
                self._request_close(CloseCode.UNSUPPORTED_DATA, CloseReason.BINARY_NOT_SUPPORTED)
                return
            now = trio.current_time()
            self._idle.deadline = now + idle_s
            # Read the drain flag here too, so no run starts after shutdown began.
            self._state.draining = self._lifecycle.draining.is_set()
            for action in self._state.receive_text(text, now):
                await self._apply(action, nursery)

    async def _apply(self, action: Action, nursery: trio.Nursery) -> None:
        if isinstance(action, Reply):
            await self._emitter.send_event(action.event)
        elif isinstance(action, StartRun):
            await self._start_run(action, nursery)
        elif isinstance(action, StopRun):
            self._cancel_run(action.run_id, CancelReason.CANCELLED_BY_CLIENT)
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
        self._expiry.deadline = self._deadline_for(claims.expires_at)
        await self._emitter.send_event(AuthOk(expires_at=claims.expires_at))

    async def _watch(self) -> None:
        # One task watches the idle clock, the token's expiry and the server's drain: a
        # task per watcher costs every idle connection a few KiB and a scheduler entry.
        with self._idle:
            with self._expiry:
                await self._lifecycle.draining.wait()
                await self._drain()
                return
            self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.TOKEN_EXPIRED)
            return
        self._request_close(CloseCode.NORMAL, CloseReason.IDLE_TIMEOUT)

    async def _keepalive(self) -> None:
        s = self._services.settings
        # The first ping at a random point of the first interval: connections opened
        # together (a restart, a reconnect storm, bench's 1,000 users) would otherwise
        # ping together every interval, 1,000 pings and pongs in one burst (bench attacks
        # saw the server at 85-100 % for half a second every 20 s).
        wait_s = s.ping_interval_s * random.random()
        while True:
            await trio.sleep(wait_s)
            wait_s = s.ping_interval_s
            with trio.move_on_after(s.pong_timeout_s) as scope:
                try:
                    await self._transport.ping()
                except TransportClosed:
                    self._peer_gone()
                    return
            if scope.cancelled_caught:
                self._request_close(CloseCode.GOING_AWAY, CloseReason.PONG_TIMEOUT)
                return

    async def _drain(self) -> None:
        self._state.draining = True
        with trio.move_on_at(self._lifecycle.grace_deadline):
            await self._runs_idle.wait()
        for run_id in list(self._runs):
            self._cancel_run(run_id, CancelReason.SERVER_SHUTDOWN)
        with trio.move_on_after(self._services.settings.send_timeout_s):
            await self._runs_idle.wait()
            await self._emitter.flush()
        self._request_close(CloseCode.GOING_AWAY, CloseReason.SERVER_SHUTDOWN)

    # -- runs ----------------------------------------------------------------

    async def _start_run(self, start: StartRun, nursery: trio.Nursery) -> None:
        scope = trio.CancelScope()
        self._runs[start.run_id] = (scope, [])
        if self._runs_idle.is_set():
            self._runs_idle = trio.Event()
        agent = self._services.agent
        started = AgentStarted(agent=agent.name, client_id=start.message.client_id)
        if not self._emitter.emit_run_nowait(start.run_id, started):
            await self._emitter.emit_run(start.run_id, started)
        nursery.start_soon(self._guard, self._run, start, scope)

    def _cancel_run(self, run_id: str, reason: CancelReason) -> None:
        entry = self._runs.get(run_id)
        if entry is not None:
            entry[1].append(reason)
            entry[0].cancel()

    async def _run(self, start: StartRun, scope: trio.CancelScope) -> None:
        run_id = start.run_id
        settings = self._services.settings
        lock = trio.StrictFIFOLock()

        async def emit(payload: Any, /) -> None:
            if not isinstance(payload, AGENT_PAYLOADS):
                raise InvalidEvent(f"an agent cannot emit {type(payload).__name__}")
            await trio.lowlevel.checkpoint_if_cancelled()
            # With nothing of this run waiting for room, queueing at once keeps the order
            # and saves two trips through the scheduler per event.
            if not lock.locked() and self._emitter.emit_run_nowait(run_id, payload):
                return
            async with lock:  # one run's events keep their order and their seq
                await self._emitter.emit_run(run_id, payload)

        run = RunContext(
            run_id=run_id,
            thread_id=start.thread_id,
            user_id=self._context.user_id,
            text=start.message.text,
            client_id=start.message.client_id,
        )
        terminal: RunPayload | None = None
        try:
            # The run's own scope carries its time limit too: one cancel scope per run.
            scope.deadline = trio.current_time() + settings.run_timeout_s
            with scope:
                try:
                    result = await self._services.agent.run(run, emit)
                    terminal = AgentCompleted(result=result)
                except (InvalidEvent, EventRefused) as exc:
                    terminal = AgentError(RunErrorCode.INVALID_EVENT, str(exc))
                except Exception:
                    self._log.exception("agent failed in run %s", run_id)
                    terminal = AgentError(RunErrorCode.AGENT_FAILED, "the agent failed")
            reasons = self._runs[run_id][1]
            if reasons:  # a cancel always records its reason before cancelling the scope
                terminal = RunCancelled(reason=reasons[0])
            elif terminal is None:  # the deadline expired
                terminal = AgentError(RunErrorCode.RUN_TIMEOUT, "the run took too long")
            try:
                if not self._emitter.emit_run_nowait(run_id, terminal):
                    await self._emitter.emit_run(run_id, terminal)
            except InvalidEvent as exc:
                await self._emitter.emit_run(
                    run_id, AgentError(RunErrorCode.INVALID_RESULT, str(exc))
                )
        finally:
            del self._runs[run_id]
            if not self._runs:
                self._runs_idle.set()
