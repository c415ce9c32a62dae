"""One connection's session: its nursery owns its context, state, emitter and runs.

This is the thin Trio layer around :class:`ConnectionState`: it reads frames,
carries out the actions the state machine returns, runs agents as child tasks,
and keeps the connection's clocks (idle, token expiry, keepalive, drain).
When :func:`run_session` returns, nothing of the connection remains.

Tasks: the connection's own task reads; one clock task keeps every deadline of the
connection and waits for the server's drain; each run is a task, which then waits for the
connection's next run (until the connection is quiet for a ping interval) rather than
ending: a task started, and a cancel scope entered, for one run in many. The queue of
frames is the transport's: the reader writes its answers at once, and what a run queues
is written at the scheduler's next pass by the server's
:class:`~app.services.PassWrites`, with every write asked for in the same pass (at once
where it does not run), so the events a run produces in one step leave in one write.
Only when the peer does not take them does a task wait for the write: the run itself
past :data:`DEFER_BYTES` queued, else a flushing task started for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Coroutine, Sequence
from typing import Any, Final

import trio

from isolation import request_scoped

from ..agents import AgentFailure
from ..agents._agent import RunContext
from ..auth._context import UserContext
from ..auth._tokens import AuthError
from ..core._codes import (
    CancelReason,
    CloseCode,
    CloseReason,
    ErrorCode,
    ResumeFailure,
    RunErrorCode,
)
from ..core._events import (
    AGENT_PAYLOADS,
    AgentCompleted,
    AgentError,
    AgentStarted,
    AuthOk,
    ConnectionReady,
    DuplicateMessage,
    ErrorEvent,
    HistoryPage,
    MessageAccepted,
    Resumed,
    RunCancelled,
    RunPayload,
    ThreadList,
    run_wire,
    serialize_frame,
)
from ..core._messages import HistoryRequest, ResumeRequest, ThreadsRequest
from ..core._state import (
    RUN_NOT_FOUND,
    Action,
    CancelElsewhere,
    Close,
    ConnectionState,
    EventRefused,
    Lookup,
    Reauthenticate,
    Reply,
    RunLimits,
    StartRun,
    StopRun,
)
from ..services._services import ServerLifecycle, Services
from ..services._timer import Alarm, Deadline, Timer
from ..threads._logs import MAX_REPLAY_PAGE, ThreadLog
from ._emitter import EventEmitter, InvalidEvent, encode_run_wire
from ._transport import SendTimeout, Transport, TransportClosed, UnsupportedFrame

__all__ = ["CLOCK_TICK_S", "CLOSE_TIMEOUT_S", "DEFER_BYTES", "run_session"]

#: How long the closing handshake may take before the session gives up on it.
CLOSE_TIMEOUT_S = 5.0
#: The clock's wake-ups fall on this grid (seconds): 10,000 connections' keepalives
#: then wake in batches. A deadline is met up to this late.
CLOCK_TICK_S: Final = 0.05
#: Queued bytes past which a run's event is written before ``emit`` returns.
DEFER_BYTES: Final = 65_536
#: Threads one connection follows at once; past it the least recently used one
#: without a run of the connection is let go.
MAX_FOLLOWED: Final = 16
#: How often a connection whose peer left checks whether its runs are still followed.
DETACHED_TICK_S: Final = 0.25
#: How long a message waits for its thread while a run of it is live in another process
#: sharing the store, before ``thread_busy``.
CLAIM_WAIT_S: Final = 5.0
THREAD_BUSY: Final = "the thread has a run in progress in another server process"
#: Events of a thread read for an agent's conversation (``uses_history``).
HISTORY_TURN_EVENTS: Final = 200
#: Largest ``history`` frame (characters of events); older events go to the next page.
MAX_PAGE_BYTES: Final = 512 * 1024


def _on_grid(deadline: float) -> float:
    """The first :data:`CLOCK_TICK_S` tick at or after ``deadline``."""
    return math.ceil(deadline / CLOCK_TICK_S) * CLOCK_TICK_S if deadline < math.inf else deadline


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
        "_awaiting_commit",
        "_cancelled",
        "_close",
        "_connection_id",
        "_context",
        "_durable",
        "_emitter",
        "_expires_at",
        "_flushing",
        "_followed",
        "_idle_runner",
        "_last_seen",
        "_lifecycle",
        "_log",
        "_next_ping",
        "_nursery",
        "_peer_left",
        "_pong_due",
        "_replaying",
        "_runs_idle",
        "_send_timeout_s",
        "_services",
        "_state",
        "_threads",
        "_ticket",
        "_transport",
        "_write_asked",
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
            self._connection_id,
            self._state,
            self._write,
            self._log,
            self._record,
            flush=self._flush,
            metrics=lifecycle.metrics,
        )
        # The store as this user sees it: every thread read and written is the user's.
        self._threads = lifecycle.threads.for_user(context.user_id)
        # Frames wait for the log's commit only on a durable store: no check per write else.
        self._durable = self._threads.durable
        self._followed: dict[str, ThreadLog] = {}  # in order of last use
        self._replaying: dict[str, list[tuple[bytes, int]]] = {}  # live frames held back
        self._ticket = 0  # the last thread-log ticket among the frames queued
        self._runs_idle: trio.Event | None = None  # made by the drain, set by the last run
        self._idle_runner: _Runner | None = None  # a run task waiting for the next run
        self._flushing = False  # a flusher task writes what a run left queued
        self._write_asked = False  # PassWrites will call _write_passed
        self._awaiting_commit = False  # the thread logs call back once it is sendable
        self._close: Close | None = None
        self._peer_left = False
        self._cancelled = False  # the nursery was cancelled (what a run's emit checks)
        self._nursery: trio.Nursery | None = None  # its cancel scope ends the connection
        # The clocks: plain times read by the clock task, which sleeps until the earliest.
        self._last_seen = trio.current_time()
        self._expires_at = self._deadline_for(context.expires_at)
        self._alarm = Alarm()  # wakes the clock when a deadline moves earlier
        self._next_ping = math.inf
        self._pong_due = math.inf  # a ping waits for its pong until then

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
                        epoch=self._threads.epoch,
                    )
                )
                nursery.start_soon(self._clock)
                await self._reader()
                if self._peer_left and self._state.has_runs:
                    await self._detached()
                self._cancel()
        except Exception:
            self._internal_error()
        finally:
            self._nursery = None
            for thread in self._followed.values():
                thread.unfollow(self)
                self._threads.release(thread)
            self._followed.clear()
            await self._close_transport()

    def _cancel(self) -> None:
        self._cancelled = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _internal_error(self) -> None:
        """Log the exception being handled (a bug) and close the connection 1011."""
        self._log.exception(
            "internal error on connection %s",
            self._connection_id,
            extra={"connection_id": self._connection_id},
        )
        self._request_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL_ERROR)

    def _request_close(self, code: CloseCode, reason: CloseReason) -> None:
        if self._close is None:
            self._close = Close(code, reason)
            if reason is CloseReason.RATE_LIMITED:
                # Otherwise a flood reconnects at once with a fresh budget.
                self._lifecycle.admission.penalize(self._context.user_id)
        self._cancel()

    def _peer_gone(self) -> None:
        self._peer_left = True
        # Runs outlive their peer for the resume grace: the reader ends the connection
        # once they are over (see ``_detached``).
        if self._services.settings.resume_grace_s <= 0 or not self._state.has_runs:
            self._cancel()

    @property
    def attached(self) -> bool:
        """Whether the peer is still there (a :class:`~app.threads.Follower`)."""
        return not self._peer_left

    async def _close_transport(self) -> None:
        if self._close is None or self._peer_left:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            # The close writes what is queued first: only what the log holds.
            await self._threads.wait_sendable(self._ticket)
            with contextlib.suppress(TransportClosed):
                await self._transport.close(int(self._close.code), str(self._close.reason))

    # -- the outbound path ---------------------------------------------------

    def _write(
        self, connection_id: str, frames: Sequence[bytes], deferred: bool, ticket: int = 0
    ) -> bool:
        """Queue ``frames`` and write what the kernel takes now; True when the caller
        must await :meth:`_flush` (which writes the rest within ``send_timeout_s``)
        before going on. Any task may call.

        ``deferred`` (a run's events): written at the scheduler's next pass, and no
        flush unless :data:`DEFER_BYTES` are waiting. ``ticket``:
        the thread-log entry the frames carry; nothing queued goes out before the log
        holds it.
        """
        if connection_id != self._connection_id:
            self._lifecycle.metrics.isolation_violations += 1
            self._log.error(
                "isolation violation: frame for connection %s refused on %s",
                connection_id,
                self._connection_id,
            )
            return False
        transport = self._transport
        try:
            transport.queue(frames)
        except TransportClosed:
            self._peer_gone()
            return False
        if ticket > self._ticket:
            self._ticket = ticket
        if not transport.immediate_writes:
            return True
        if deferred:
            if transport.backlog() >= DEFER_BYTES:
                return True
            self._write_later()
            return False
        self._write_queued()
        return transport.backlog() > 0 or (
            self._durable and not self._threads.sendable(self._ticket)
        )

    async def _flush(self) -> None:
        """Wait until everything queued is in the log and written, within ``send_timeout_s``.

        A peer gone ends the session; a peer that does not read is closed 1008; a store
        that does not commit in that time closes it 1011. Cancellation: what is not
        written stays queued.
        """
        deadline = trio.current_time() + self._send_timeout_s
        threads = self._threads
        # A loop: frames queued while waiting raise the ticket to wait for.
        while not threads.sendable(self._ticket):
            with trio.move_on_at(deadline):
                await threads.wait_sendable(self._ticket)
            if trio.current_time() >= deadline and not threads.sendable(self._ticket):
                self._log.error("thread store too slow on connection %s", self._connection_id)
                self._request_close(CloseCode.INTERNAL_ERROR, CloseReason.INTERNAL_ERROR)
                return
        try:
            await self._transport.flush(deadline)
        except TransportClosed:
            self._peer_gone()
        except SendTimeout:
            self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.SLOW_CONSUMER)

    def _write_queued(self) -> None:
        """Write what runs queued, without waiting; a task finishes what the peer left
        (or what the thread log has not committed yet)."""
        if self._flushing or self._nursery is None:
            return
        if self._durable and not self._threads.sendable(self._ticket):
            # The log's writer calls back after the commit: no task waits for it.
            if not self._awaiting_commit:
                self._awaiting_commit = True
                self._threads.when_sendable(self._ticket, self._committed)
            return
        if not self._transport.write_now():
            self._flushing = True
            self._nursery.start_soon(self._flusher)

    def _write_later(self) -> None:
        """Write what runs queued at the scheduler's next pass (see PassWrites), or now."""
        if not self._write_asked:
            if self._lifecycle.writes.later(self._write_passed):
                self._write_asked = True
            else:
                self._write_queued()

    def _write_passed(self) -> None:
        """PassWrites' call: from its task, so a bug here ends this connection (logged,
        1011), as it would in one of the connection's own tasks, not the server."""
        self._write_asked = False
        try:
            self._write_queued()
        except Exception:
            self._internal_error()

    def _committed(self) -> None:
        self._awaiting_commit = False
        self._write_queued()

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
            await self._start_run(action)
        elif isinstance(action, Reply):
            await self._emitter.send_event(action.event)
        elif isinstance(action, StopRun):
            action.handle.cancel()
        elif isinstance(action, Reauthenticate):
            await self._reauthenticate(action.token)
        elif isinstance(action, Lookup):
            await self._lookup(action.request)
        elif isinstance(action, CancelElsewhere):
            await self._cancel_elsewhere(action.run_id)
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
        if transport.pings:
            self._next_ping = trio.current_time() + ping_s * random.random()
        draining = self._lifecycle.draining
        while not draining.is_set():
            if self._peer_left:  # its runs outlive it: ``_detached`` keeps them
                return
            now = trio.current_time()
            idle_at = self._last_seen + s.idle_timeout_s
            if now >= self._expires_at:
                self._request_close(CloseCode.POLICY_VIOLATION, CloseReason.TOKEN_EXPIRED)
                return
            if now >= idle_at:
                self._request_close(CloseCode.NORMAL, CloseReason.IDLE_TIMEOUT)
                return
            if now >= self._pong_due:
                self._request_close(CloseCode.GOING_AWAY, CloseReason.PONG_TIMEOUT)
                return
            # No ping waits for its pong, and the next is due (a tick early at most).
            if self._pong_due == math.inf and now + CLOCK_TICK_S >= self._next_ping:
                # On the interval's own grid: a late wake-up does not push later pings.
                self._next_ping = max(self._next_ping + ping_s, now)
                self._pong_due = now + s.pong_timeout_s  # before ping(): a pong may be at once
                if now - self._last_seen >= ping_s:  # quiet: no task waits for its next run
                    self._dismiss_idle_runner()
                try:
                    transport.ping(self._ponged)
                except TransportClosed:
                    self._peer_gone()
                    return
                self._write_queued()
                continue
            await timer.sleep_until(self._next_duty(), unless=draining, alarm=alarm)
        await self._drain()

    def _next_duty(self) -> float:
        """When the clock has something to do next, on its grid: the token's expiry, the
        idle timeout, and the pong's deadline while a ping waits, else the next ping."""
        idle_at = self._last_seen + self._services.settings.idle_timeout_s
        due = self._pong_due if self._pong_due != math.inf else self._next_ping
        return _on_grid(min(self._expires_at, idle_at, due))

    def _ponged(self) -> None:
        # Called by the transport as it reads the pong. The clock sleeps until the pong's
        # deadline: it sleeps on to its next duty instead, saving a wake-up per ping.
        self._pong_due = math.inf
        self._alarm.postpone(self._next_duty())

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

    async def _detached(self) -> None:
        """The peer left while runs were live: keep each while another connection of the
        user follows its thread, and for ``resume_grace_s`` after none does; then cancel
        it (``client_gone``). Returns once no run is left.

        The runs stay where they were started, in this connection's nursery: nothing of
        them is reachable but through the user's own threads.
        """
        grace = self._services.settings.resume_grace_s
        state, draining = self._state, self._lifecycle.draining
        self._runs_idle = idle = trio.Event()
        alone_since: dict[str, float] = {}
        while state.has_runs:
            if draining.is_set():
                await self._drain()
                return
            now = trio.current_time()
            for run_id in state.active_runs:
                thread = self._followed.get(state.thread_of(run_id) or "")
                if thread is not None and thread.followed_by_another(self):
                    alone_since.pop(run_id, None)
                elif now - alone_since.setdefault(run_id, now) >= grace:
                    # Asked at the last moment: a client of another process sharing the
                    # store may have resumed the thread since the last heartbeat.
                    if thread is not None and await self._threads.followed_elsewhere(thread):
                        alone_since.pop(run_id, None)
                        continue
                    stop = state.stop(run_id, CancelReason.CLIENT_GONE)
                    if stop is not None:
                        stop.handle.cancel()
            with trio.move_on_after(DETACHED_TICK_S):
                await idle.wait()

    # -- threads ---------------------------------------------------------------

    def _record(
        self, thread_id: str, run_id: str, kind: str, wire: dict[str, Any]
    ) -> tuple[bytes, int]:
        """Append a run's event (its ``wire`` object) to its thread's log: its frame (with
        ``thread_seq``) and ticket. Raises :class:`InvalidEvent` (nothing appended) if it
        is not JSON."""
        thread = self._followed[thread_id]
        seq = wire["thread_seq"] = thread.last_seq + 1
        frame = encode_run_wire(kind, wire)  # before the append: a failure uses nothing
        return frame, thread.append_frame(kind, run_id, seq, frame, self)

    def deliver(self, thread_id: str, frame: bytes, ticket: int) -> None:
        """An event of a followed thread, appended by another connection of the user."""
        held = self._replaying.get(thread_id)
        if held is not None:  # a resume is replaying this thread: after the replay
            held.append((frame, ticket))
            return
        if self._peer_left:
            return
        try:
            self._transport.queue((frame,))
        except TransportClosed:
            self._peer_gone()
            return
        if ticket > self._ticket:
            self._ticket = ticket
        self._write_queued()

    async def _follow(
        self, thread_id: str, *, fresh: bool = False, live: bool = False
    ) -> ThreadLog:
        """Pin ``thread_id`` of this user and return its log; with ``live`` (a resume) also
        receive what the user's other connections add to it.

        ``fresh``: an id this server just made up; nothing to read. Cancellation:
        nothing is pinned.
        """
        followed = self._followed
        thread = followed.pop(thread_id, None)
        if thread is None:
            if fresh:
                thread = self._threads.create(thread_id)
            else:
                thread = await self._threads.open(thread_id)
                if thread_id in followed:  # another of this connection's tasks opened it
                    self._threads.release(thread)
                    thread = followed.pop(thread_id)
        if live:
            thread.follow(self)
        followed[thread_id] = thread  # the most recently used last
        if len(followed) > MAX_FOLLOWED:
            for old in followed:
                if old != thread_id and not self._runs_in(old) and old not in self._replaying:
                    self._unfollow(old)
                    break
        return thread

    def _runs_in(self, thread_id: str) -> bool:
        """Whether a run of this connection is in ``thread_id`` (its log stays pinned)."""
        state = self._state
        return any(state.thread_of(run_id) == thread_id for run_id in state.active_runs)

    def _unfollow(self, thread_id: str) -> None:
        thread = self._followed.pop(thread_id, None)
        if thread is not None:
            thread.unfollow(self)
            self._threads.release(thread)

    async def _lookup(self, request: HistoryRequest | ThreadsRequest | ResumeRequest) -> None:
        if isinstance(request, ResumeRequest):
            await self._resume(request)
        elif isinstance(request, HistoryRequest):
            # Opened first: a thread a crash left with a run unended is mended on open.
            self._threads.release(await self._threads.open(request.thread_id))
            entries, has_more = await self._threads.page(
                request.thread_id, request.before, request.limit
            )
            events = [json.loads(entry.text) for entry in entries]
            # A page stays a frame any client takes: the oldest events wait for the next.
            size = sum(len(entry.text) for entry in entries)
            while size > MAX_PAGE_BYTES and len(events) > 1:
                size -= len(entries[len(entries) - len(events)].text)
                events.pop(0)
                has_more = True
            await self._emitter.send_event(HistoryPage(request.thread_id, tuple(events), has_more))
        else:
            summaries = await self._threads.threads(request.limit)
            await self._emitter.send_event(
                ThreadList(
                    tuple(
                        {
                            "thread_id": summary.thread_id,
                            "last_seq": summary.last_seq,
                            "updated_at": summary.updated_at,
                        }
                        for summary in summaries
                    )
                )
            )

    async def _resume(self, request: ResumeRequest) -> None:
        """Replay ``thread_id`` after ``after``, then ``resumed``, then its live events.

        Live events appended meanwhile are held back and follow the replay: no gap, no
        duplicate. Cancellation: the connection is ending; nothing to undo.
        """
        thread_id, after = request.thread_id, request.after
        emitter = self._emitter
        failure: ResumeFailure | None = None
        held: list[tuple[bytes, int]] = []
        if request.epoch is not None and request.epoch != self._threads.epoch:
            failure = ResumeFailure.EPOCH_CHANGED
        else:
            thread = await self._follow(thread_id, live=True)
            # The replay ends where the log ends now, and what is added from now on is held
            # back until the replay is queued: no wait in between (mark_followed waits for
            # the shared store, and an event appended then would come twice).
            upto = thread.last_seq
            self._replaying[thread_id] = held
            try:
                await self._threads.mark_followed(thread)  # if another process runs it
                if not thread.exists:
                    failure = ResumeFailure.UNKNOWN_THREAD
                elif after > upto:  # the client saw more than the log holds: it lost data
                    failure = ResumeFailure.EPOCH_CHANGED
                elif after + 1 < thread.first_seq:
                    failure = ResumeFailure.RETENTION
                else:
                    failure = await self._replay(thread_id, after, upto, held)
            finally:
                self._replaying.pop(thread_id, None)  # the replay's queueing took it
        if failure is not None:
            if not self._runs_in(thread_id):
                self._unfollow(thread_id)
                held.clear()
            await emitter.send_event(Resumed(thread_id, False, reason=failure))
            if held:  # still followed (a run of this connection is in it): in order
                frames = [frame for frame, _ in held]
                ticket = max(ticket for _, ticket in held)
                if self._write(self._connection_id, frames, False, ticket):
                    await self._flush()

    async def _replay(
        self, thread_id: str, after: int, upto: int, held: list[tuple[bytes, int]]
    ) -> ResumeFailure | None:
        """Queue the log's events after ``after`` up to ``upto``, then ``resumed`` and the
        ``held`` live events (which the caller holds back in ``_replaying``)."""
        while after < upto:
            entries = await self._threads.after(thread_id, after, MAX_REPLAY_PAGE)
            if not entries or entries[0].thread_seq != after + 1:
                return ResumeFailure.RETENTION  # pruned while replaying
            frames = [entry.text.encode() for entry in entries if entry.thread_seq <= upto]
            if self._write(self._connection_id, frames, False):
                await self._flush()
            after = entries[-1].thread_seq
        # No wait from here to the queueing of what was held: its order is the log's.
        del self._replaying[thread_id]
        thread = self._followed[thread_id]
        live = tuple(sorted(thread.live_runs.keys() | thread.remote_runs))
        frames = [serialize_frame(Resumed(thread_id, True, last_seq=upto, live_runs=live))]
        frames.extend(frame for frame, _ in held)
        ticket = max((ticket for _, ticket in held), default=0)
        if self._write(self._connection_id, frames, False, ticket):
            await self._flush()
        return None

    async def _cancel_elsewhere(self, run_id: str) -> None:
        # A run of this user whose connection left, on a thread this connection follows.
        for thread in self._followed.values():
            stop = thread.live_runs.get(run_id)
            if stop is not None and stop():
                return
        for thread in self._followed.values():
            if run_id in thread.remote_runs:  # live in another process sharing the store
                await self._threads.cancel_remote(thread, run_id)
                return
        await self._emitter.send_event(ErrorEvent(ErrorCode.RUN_NOT_FOUND, RUN_NOT_FOUND, run_id))

    # -- runs ----------------------------------------------------------------

    async def _start_run(self, start: StartRun) -> None:
        # The thread is loaded here, by the reader: runs start in the order of their
        # messages, and the next message waits for this one's thread.
        try:
            # A thread this connection follows already (its next message, say): no wait,
            # only made the most recently used.
            thread = self._followed.pop(start.thread_id, None)
            if thread is not None:
                self._followed[start.thread_id] = thread
            else:
                thread = await self._follow(start.thread_id, fresh=start.message.thread_id is None)
            if not thread.owned:  # another process sharing the store is writing it
                with trio.move_on_after(CLAIM_WAIT_S):
                    await self._threads.own(thread)
        except BaseException:
            self._state.discard(start.run_id)
            raise
        if not thread.owned:
            self._state.discard(start.run_id)
            await self._emitter.send_event(
                ErrorEvent(ErrorCode.THREAD_BUSY, THREAD_BUSY, start.message.client_id)
            )
            return
        runner = self._idle_runner
        if runner is None:
            runner = _Runner(self._lifecycle.timer)  # task started below
        else:
            self._idle_runner = None
        # On the clock's grid: the deadlines of runs started together share a slot.
        runner.begin(_on_grid(trio.current_time() + self._services.settings.run_timeout_s))
        self._state.attach(start.run_id, runner)
        self._emitter.run_received(start.run_id)  # the turn starts: its message was just read
        if runner.task is None:
            assert self._nursery is not None
            self._nursery.start_soon(self._runs, runner, start, thread)
        else:
            runner.handed = start, thread
            trio.lowlevel.reschedule(runner.task)

    async def _runs(self, runner: _Runner, start: StartRun, thread: ThreadLog) -> None:
        """A run task: serve ``start``, then each run the reader hands it while it waits as
        the connection's idle run task. It ends once a run of it was cancelled (its scope
        is spent), when another run task waits already, or when the clock dismisses it.

        Cancellation (the connection's): the run it serves ends unfinished in its log.
        """
        runner.task = trio.lowlevel.current_task()
        serving = True
        terminal: RunPayload | None = None
        try:
            with runner.scope:
                while True:
                    terminal = None  # still None below if the agent was cancelled
                    # The agent is awaited here, not in a helper: each coroutine between
                    # the run task and the agent's wait is resumed on every wake.
                    history = await self._accept(start, thread)
                    ran = history is not None
                    if history is not None:
                        terminal = await self._run_agent(start, runner, history)
                    if runner.scope.cancel_called:
                        break  # stopped, or out of time: it ends below, outside the spent scope
                    if ran:
                        await self._end_run(start.run_id, terminal)
                    serving = False
                    self._forget_run(start.run_id, thread)
                    handed = await self._next_run(runner)
                    if handed is None:
                        return
                    (start, thread), serving = handed, True
            await self._end_run(start.run_id, terminal)
        finally:
            runner.release()
            if serving:
                self._forget_run(start.run_id, thread)

    async def _next_run(self, runner: _Runner) -> tuple[StartRun, ThreadLog] | None:
        """Wait as the connection's idle run task for the run the reader hands over; None
        at once when another task waits already, or once the clock dismisses this one.
        Cancellation: it no longer waits."""
        if self._idle_runner is not None:
            return None
        self._idle_runner = runner
        await trio.lowlevel.wait_task_rescheduled(self._abort_idle)
        handed, runner.handed = runner.handed, None
        return handed

    def _abort_idle(self, _: Any) -> trio.lowlevel.Abort:
        self._idle_runner = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _dismiss_idle_runner(self) -> None:
        """End the idle run task (a quiet connection keeps no task for its next run)."""
        runner, self._idle_runner = self._idle_runner, None
        if runner is not None and runner.task is not None:
            trio.lowlevel.reschedule(runner.task)  # ``handed`` is None: it ends

    async def _accept(
        self, start: StartRun, thread: ThreadLog
    ) -> tuple[tuple[str, str], ...] | None:
        """Accept the message for its run, logged: the history its agent gets; or None for
        a duplicate, answered without a run. Cancellation: nothing accepted."""
        run_id, message = start.run_id, start.message
        client_id = message.client_id
        first = None if client_id is None else thread.client_ids.get(client_id)
        if first is not None:
            # A retried send (after a reconnect, say): the first copy's run answers it.
            assert client_id is not None
            await self._emitter.send_event(DuplicateMessage(thread.thread_id, client_id, first))
            return None
        if client_id is not None:
            thread.client_ids[client_id] = run_id  # claimed: a copy now is a duplicate
        history: tuple[tuple[str, str], ...] = ()
        if getattr(self._services.agent, "uses_history", False) and thread.exists:
            try:
                history = await self._conversation(thread.thread_id, thread.last_seq + 1)
            except BaseException:
                if client_id is not None:
                    del thread.client_ids[client_id]
                raise
        # From the message to agent_started no wait: both are in one commit, so a crash
        # leaves no accepted message without its run's start.
        _, ticket = thread.append(
            "user_message",  # the entry of the message itself (its wire type: message_accepted)
            run_id,
            lambda seq: serialize_frame(
                MessageAccepted(run_id, start.thread_id, seq, message.text, client_id)
            ),
            origin=self,
            client_id=client_id,
        )
        self._ticket = max(self._ticket, ticket)
        thread.live_runs[run_id] = lambda: self._stop_run(run_id)
        return history

    def _forget_run(self, run_id: str, thread: ThreadLog) -> None:
        if thread.live_runs.pop(run_id, None) is not None:
            self._log_unfinished(run_id)
        state = self._state
        state.discard(run_id)
        if self._runs_idle is not None and not state.has_runs:
            self._runs_idle.set()

    def _log_unfinished(self, run_id: str) -> None:
        """Give the thread's log the terminal event of a run cancelled with its connection
        (it could not send one): every run in a log ends with exactly one."""
        state = self._state
        if state.thread_of(run_id) is None:  # it ended with its own terminal event
            return
        draining = self._lifecycle.draining.is_set()
        reason = CancelReason.SERVER_SHUTDOWN if draining else CancelReason.CLIENT_GONE
        payload = RunCancelled(reason=reason)
        thread_id, seq = state.next_event(run_id, payload)
        self._record(thread_id, run_id, payload.TYPE, run_wire(run_id, thread_id, seq, payload))
        state.advance(run_id, seq, payload)

    def _stop_run(self, run_id: str) -> bool:
        """Cancel ``run_id`` for a client (perhaps on another connection of the user)."""
        stop = self._state.stop(run_id, CancelReason.CANCELLED_BY_CLIENT)
        if stop is None:
            return False
        stop.handle.cancel()
        return True

    async def _conversation(self, thread_id: str, before: int) -> tuple[tuple[str, str], ...]:
        """The turns of ``thread_id`` before ``before`` as (role, content), oldest first:
        what an agent with ``uses_history`` gets. Cancellation: nothing to undo."""
        entries, _ = await self._threads.page(thread_id, before, HISTORY_TURN_EVENTS)
        turns: list[tuple[str, str]] = []
        for entry in entries:
            if entry.kind == "user_message":
                turns.append(("user", json.loads(entry.text)["text"]))
            elif entry.kind == AgentCompleted.TYPE:
                result = json.loads(entry.text)["result"]
                text = result.get("text") if isinstance(result, dict) else None
                turns.append(("assistant", text if isinstance(text, str) else json.dumps(result)))
        return tuple(turns)

    async def _run_agent(
        self, start: StartRun, runner: _Runner, history: tuple[tuple[str, str], ...]
    ) -> RunPayload | None:
        """The agent's part of a run: its terminal event, or None if it ended by the run's
        cancel scope (which raises ``Cancelled`` unless the agent swallowed it)."""
        run_id = start.run_id
        queue_run = self._emitter.queue_run

        async def emit(payload: Any, /) -> None:
            if not isinstance(payload, AGENT_PAYLOADS):
                raise InvalidEvent(f"an agent cannot emit {type(payload).__name__}")
            # A checkpoint for cancels only: one made while the run waited landed at the
            # wait, so a pending one was made since, and every cancel of a run or of its
            # connection says so (a Trio check at every event is 1 % of a turn).
            if runner.cancelled or self._cancelled:
                await trio.lowlevel.checkpoint_if_cancelled()
            if queue_run(run_id, payload, deferred=True):  # the emitter's emit_run, inlined
                await self._flush()

        agent = self._services.agent
        run = RunContext(
            run_id=run_id,
            thread_id=start.thread_id,
            user_id=self._context.user_id,
            text=start.message.text,
            client_id=start.message.client_id,
            timer=self._lifecycle.timer,
            history=history,
        )
        started = AgentStarted(agent=agent.name, client_id=start.message.client_id)
        if queue_run(run_id, started, deferred=True):
            await self._flush()
        runner.agent_starts()
        try:
            result = await agent.run(run, emit)
            return AgentCompleted(result=result)
        except (InvalidEvent, EventRefused) as exc:
            return AgentError(RunErrorCode.INVALID_EVENT, str(exc))
        except AgentFailure as exc:
            return AgentError(exc.code, exc.message)
        except Exception:
            self._log.exception(
                "agent failed in run %s",
                run_id,
                extra={"connection_id": self._connection_id, "run_id": run_id},
            )
            return AgentError(RunErrorCode.AGENT_FAILED, "the agent failed")
        finally:
            runner.end()

    async def _end_run(self, run_id: str, terminal: RunPayload | None) -> None:
        """Send the run's terminal event: the agent's, or ``run_cancelled`` if it was
        stopped, or ``run_timeout`` (``terminal`` None) if its deadline expired."""
        queue_run = self._emitter.queue_run
        reason = self._state.cancel_reason(run_id)
        if reason is not None:  # a cancel always records its reason before cancelling
            terminal = RunCancelled(reason=reason)
        elif terminal is None:  # the deadline expired
            terminal = AgentError(RunErrorCode.RUN_TIMEOUT, "the run took too long")
        try:
            flush = queue_run(run_id, terminal, deferred=True)
        except InvalidEvent as exc:
            flush = queue_run(
                run_id, AgentError(RunErrorCode.INVALID_RESULT, str(exc)), deferred=True
            )
        if flush:
            await self._flush()
        # Written at the next pass, or once the log holds it; a peer that does not read
        # gets a flusher.
        self._write_later()


@request_scoped
class _Runner:
    """A run task's cancel scope and the run it serves: the handle ``StopRun`` cancels.

    A run task serves one run, then may wait for the connection's next one, all under
    one cancel scope (entering and leaving a Trio cancel scope costs as much as starting
    a task). A stop cancels the scope only while the run's agent runs; one that comes
    before is kept until the agent starts, one after is too late. The run's deadline is
    armed on the server's timer when its agent starts, and cancels the scope if it
    passes; without a running timer, it is the scope's own deadline.
    """

    __slots__ = (
        "cancelled",
        "deadline",
        "handed",
        "live",
        "scope",
        "stopped",
        "task",
        "timeout",
        "timer",
    )

    def __init__(self, timer: Timer) -> None:
        self.scope = trio.CancelScope()
        self.task: trio.lowlevel.Task | None = None  # set once its task runs
        self.timer = timer
        # Expiry cancels the scope itself: the timer runs only while this task waits, so the
        # cancel lands at that wait (``cancelled`` is for cancels an emit could meet).
        self.timeout = Deadline(self.scope.cancel)
        self.cancelled = False  # the scope was cancelled (what the run's emit checks)
        self.handed: tuple[StartRun, ThreadLog] | None = None  # the next run, by the reader
        self.deadline = math.inf
        self.live = False  # the agent runs: a stop cancels the scope; its deadline is armed
        self.stopped = False  # a stop came before the agent started

    def begin(self, deadline: float) -> None:
        self.deadline, self.stopped = deadline, False

    def cancel(self) -> None:
        """Stop the run (what :class:`StopRun` calls)."""
        if self.live:
            self._cancel_scope()
        else:
            self.stopped = True

    def agent_starts(self) -> None:
        """The run's agent starts: from now a stop cancels it (one kept, at once), and
        its deadline is armed."""
        self.live = True
        if not self.timer.arm(self.timeout, self.deadline):
            self.scope.deadline = self.deadline
        if self.stopped:
            self._cancel_scope()

    def _cancel_scope(self) -> None:
        self.cancelled = True
        self.scope.cancel()

    def release(self) -> None:
        """The run task ends: the timer forgets its deadline."""
        self.timer.forget(self.timeout)

    def end(self) -> None:
        """The agent is over: stops come too late, and the deadline is disarmed."""
        if self.live:
            self.live = False
            if self.timeout.armed:
                self.timeout.armed = False
            else:  # on the scope (or expired: the scope is spent either way)
                self.scope.deadline = math.inf
