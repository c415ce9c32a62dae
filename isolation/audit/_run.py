"""The runtime isolation audit: many concurrent users against a live chat.v1 server.

:func:`run_audit` connects ``users`` simulated users (in waves bounded by
``connect_concurrency``), waits until all are connected, then each runs its plan:
overlapping runs whose texts and ids carry canaries, some cancelled right after
``agent_started``, some dropped mid-run (TCP reset, then reconnect and go on), some
with ids drawn from a small pool shared with other users, and IDOR probes against
another user's live run. Every received frame goes through that user's
:class:`~isolation.audit._ledger.UserLedger`; cross-user checks run at the end.

The audit speaks only chat.v1 over WebSocket: it works against any server at a URL
and imports nothing of this project's ``app`` package.
"""

from __future__ import annotations

import random
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import trio
from trio_websocket import WebSocketConnection

from .._markers import request_scoped
from ._board import Board, Target, raise_fd_limit
from ._checks import cross_check, lookalike_id, violations_with_owners
from ._ledger import CanaryIndex, UserLedger
from ._link import (
    INTERRUPTED,
    ConnectFailed,
    Endpoint,
    FrameTimeout,
    Link,
    LinkClosed,
    Stream,
    with_link,
)
from ._plan import AuditConfig, AuditError, RunPlan, UserPlan, canary_index, fetch_tokens
from ._plan import make_plans as make_plans
from ._report import AuditReport, ProbeResult, ThreadProbe

__all__ = ["AuditConfig", "AuditError", "AuditReport", "lookalike_id", "run_audit"]

#: Server-initiated closes after which a user reconnects to finish its runs.
_MAX_RECONNECTS: Final = 3
_RESULT_DONE: Final = "done"
_RESULT_DROPPED: Final = "dropped"
_RESULT_CLOSED: Final = "closed"
_RESULT_FAILED: Final = "failed"
_PREFLIGHT_OK: Final = "ok"
#: Handshakes a user tries before giving up (timeouts and 503 only).
_CONNECT_ATTEMPTS: Final = 3
#: Own threads whose history each user reads at the end of its work.
_OWN_HISTORIES: Final = 2


@attrs.define
class _UserState:
    remaining: deque[RunPlan]
    probe_pending: bool
    arrived: bool = False


@request_scoped
class _Audit:
    def __init__(
        self,
        config: AuditConfig,
        plans: Sequence[UserPlan],
        canaries: CanaryIndex,
        tokens: Sequence[str],
    ) -> None:
        self.config = config
        self.plans = plans
        self.tokens = tokens
        self.ledgers = [UserLedger(plan.user, canaries) for plan in plans]
        self.board = Board(len(plans))
        self.handshakes = trio.Semaphore(config.connect_concurrency)
        self.probes: list[ProbeResult] = []
        self.thread_lookups: list[ThreadProbe] = []
        self.connections = 0
        self.connect_failures = 0
        self.connect_retries = 0
        self.drops = 0
        self.thread_probes = 0
        self.probe_threads: set[tuple[str, str]] = set()  # (prober, victim's thread)
        self.endpoint = Endpoint.parse(config.url)
        self.tls = ssl.create_default_context() if self.endpoint.tls else None
        self.protocols = [config.subprotocol] if config.subprotocol else None

    def _link(self, ws: WebSocketConnection, stream: Stream, ledger: UserLedger) -> Link:
        return Link(
            ws,
            stream,
            ledger,
            frame_timeout=self.config.frame_timeout_s,
            rate_override=self.config.rate_per_s,
        )

    async def _with_link(self, index: int, body: Callable[[Link], Awaitable[str]]) -> str:
        """Connect user ``index`` and run ``body`` on its link; raises ConnectFailed."""

        def make_link(ws: WebSocketConnection, stream: Stream) -> Link:
            self.connections += 1
            return self._link(ws, stream, self.ledgers[index])

        return await with_link(
            self.endpoint,
            tls=self.tls,
            protocols=self.protocols,
            headers=[self._authorization(index)],
            wait_s=self.config.frame_timeout_s,
            make_link=make_link,
            body=body,
        )

    def _authorization(self, index: int) -> tuple[bytes, bytes]:
        return (b"authorization", f"Bearer {self.tokens[index]}".encode())

    # -- preflight -------------------------------------------------------------------

    async def preflight(self) -> None:
        """One connection of the first user: reachable, accepts its token, speaks chat.v1.

        Raises AuditError with a message a user can act on.
        """
        url = self.config.url

        async def check(link: Link) -> str:
            try:
                await link.wait_ready()
            except FrameTimeout:
                return (
                    f"{url} accepted the WebSocket but sent no connection_ready within "
                    f"{self.config.frame_timeout_s:g} s: is it a chat.v1 server?"
                )
            except LinkClosed:
                return (
                    f"{url} closed the connection ({link.close_code} {link.close_reason}) "
                    "before connection_ready"
                )
            return _PREFLIGHT_OK

        ledger = self.ledgers[0]
        ledger.begin_connection()
        try:
            problem = await self._with_link(0, check)
        except ConnectFailed as exc:
            if exc.status is None:
                raise AuditError(str(exc)) from None
            hint = " (check the token options)" if exc.status in (401, 403) else ""
            raise AuditError(
                f"{url} refused the handshake of {self.plans[0].user}: {exc}{hint}"
            ) from None
        finally:
            ledger.end_connection(lost=False)
        if problem == INTERRUPTED:
            raise AuditError(f"the connection to {url} broke during the first handshake")
        if problem != _PREFLIGHT_OK:
            raise AuditError(problem)

    # -- users ------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for plan in self.plans:
                nursery.start_soon(self._user, plan)

    async def _user(self, plan: UserPlan) -> None:
        state = _UserState(deque(plan.runs), probe_pending=plan.victim is not None)
        closes = 0
        try:
            while True:
                result = await self._connection(plan, state)
                if result == _RESULT_CLOSED:
                    closes += 1
                    if closes > _MAX_RECONNECTS or not (state.remaining or state.probe_pending):
                        break
                elif result != _RESULT_DROPPED:
                    break
        finally:
            if not state.arrived:
                state.arrived = True
                self.board.arrive()
            self.board.publish(plan.index, None)  # probers of this user stop waiting

    async def _connection(self, plan: UserPlan, state: _UserState) -> str:
        ledger = self.ledgers[plan.index]
        ledger.begin_connection()
        result = _RESULT_FAILED
        holding = True

        async def session(link: Link) -> str:
            nonlocal holding
            try:
                await link.wait_ready()
            except (FrameTimeout, LinkClosed) as exc:
                self.connect_failures += 1
                ledger.add_anomaly("connect-failed", f"no connection_ready: {exc}")
                return _RESULT_FAILED
            self.handshakes.release()
            holding = False
            if not state.arrived:
                state.arrived = True
                self.board.arrive()
                await self.board.everyone.wait()
            self.board.links[plan.index] = link
            try:
                return await self._work(link, plan, state)
            finally:
                if self.board.links.get(plan.index) is link:
                    del self.board.links[plan.index]

        await self.handshakes.acquire()
        try:
            for attempt in range(1, _CONNECT_ATTEMPTS + 1):
                try:
                    result = await self._with_link(plan.index, session)
                    break
                except ConnectFailed as exc:
                    # A timeout or a full server (503) may pass; another refusal will not.
                    if attempt == _CONNECT_ATTEMPTS or exc.status not in (None, 503):
                        self.connect_failures += 1
                        ledger.add_anomaly("connect-failed", f"{exc} (attempt {attempt})")
                        break
                    self.connect_retries += 1
                    await trio.sleep(0.5 * attempt)
        finally:
            if holding:
                self.handshakes.release()
            ledger.end_connection(lost=result != _RESULT_DONE)
        return result

    async def _work(self, link: Link, plan: UserPlan, state: _UserState) -> str:
        overlap = min(self.config.overlap, link.limits.max_runs or self.config.overlap)
        slots = trio.Semaphore(overlap)
        async with trio.open_nursery() as work:
            link.work_scope = work.cancel_scope
            if state.probe_pending:
                state.probe_pending = False
                work.start_soon(self._probe, link, plan, state, slots)
            while state.remaining and not link.closed.is_set():
                await slots.acquire()
                if not state.remaining:
                    slots.release()
                    break
                run = state.remaining.popleft()
                work.start_soon(self._run, link, plan, run, slots, state.remaining, None)
        if not link.dropped and not link.closed.is_set():
            try:
                if link.threads_supported:
                    await self._own_threads(link)
                await link.ping()  # every frame of this connection's runs has been read
            except FrameTimeout as exc:
                link.ledger.add_anomaly("timeout", f"final ping: {exc}")
                return _RESULT_DONE
            except LinkClosed:
                pass
            else:
                return _RESULT_DONE
        if link.dropped:
            return _RESULT_DROPPED
        link.ledger.add_anomaly(
            "server-closed",
            f"the server closed the connection: {link.close_code} {link.close_reason}",
        )
        return _RESULT_CLOSED

    async def _run(
        self,
        link: Link,
        plan: UserPlan,
        run: RunPlan,
        slots: trio.Semaphore,
        requeue: deque[RunPlan] | None,
        thread_id: str | None,
    ) -> None:
        try:
            await trio.sleep(run.think_s)
            await link.start(run, thread_id if run.victim_thread else run.thread_id)
            answer = await link.wait_start(run.tag)
            if answer.type != "agent_started" or answer.run_id is None:
                return
            if run.target:
                frame = answer.frame or {}
                thread = frame.get("thread_id")
                target = Target(answer.run_id, thread if isinstance(thread, str) else None)
                self.board.publish(plan.index, target)
            if run.drop:
                self.drops += 1
                await link.drop()
                return
            if run.cancel:
                await link.cancel(answer.run_id)
            await link.wait_end(answer.run_id)
        except FrameTimeout as exc:
            link.ledger.add_anomaly("timeout", str(exc))
        except LinkClosed:
            pass
        finally:
            if requeue is not None and not link.was_sent(run.tag):
                requeue.appendleft(run)  # never sent: it runs on the next connection
            slots.release()

    async def _own_threads(self, link: Link) -> None:
        """Ask for this user's thread list and the history of a few of its threads: the
        ledger judges every entry (another user's canary, run or thread is a leak)."""
        await link.threads()
        for thread in sorted(link.ledger.threads_used)[:_OWN_HISTORIES]:
            await link.history(thread)

    async def _probe(
        self, link: Link, plan: UserPlan, state: _UserState, slots: trio.Semaphore
    ) -> None:
        assert plan.victim is not None
        victim = self.plans[plan.victim]
        done = False
        try:
            target = await self.board.target(plan.victim)
            if target is None:
                done = True
                link.ledger.add_anomaly("probe-skipped", f"{victim.user} had no run to probe")
                return
            bogus = lookalike_id(target.run_id, random.Random(plan.bogus_seed))
            await link.cancel(target.run_id)
            await link.ping()  # the server has handled the cancel; its answer, if any, is read
            still_open = await self._still_open(plan.victim, target.run_id)
            await link.cancel(bogus)
            await link.ping()
            real, fake = link.replies(target.run_id), link.replies(bogus)
            self.probes.append(
                ProbeResult(
                    attacker=plan.user,
                    victim=victim.user,
                    run_id=target.run_id,
                    bogus_id=bogus,
                    real_reply=real[0] if real else None,
                    bogus_reply=fake[0] if fake else None,
                    victim_run_open=still_open,
                )
            )
            done = True
            if plan.probe_run is not None and target.thread_id is not None:
                await slots.acquire()
                try:
                    await self._probe_thread(link, plan, target, bogus)
                finally:
                    slots.release()
        except FrameTimeout as exc:
            done = True
            link.ledger.add_anomaly("timeout", f"IDOR probe: {exc}")
        except LinkClosed:
            pass
        finally:
            if not done:
                state.probe_pending = True  # retried on the next connection

    async def _probe_thread(self, link: Link, plan: UserPlan, target: Target, bogus: str) -> None:
        """Probe the victim's thread by its id: history and resume of it and of a
        look-alike that never existed (the answers must match), then a message on it
        (which must start a thread of the prober's own), a cancel of the victim's run
        while following that thread, and the history and thread list afterwards.
        """
        assert plan.probe_run is not None
        assert plan.victim is not None
        thread = target.thread_id
        assert thread is not None
        victim = self.plans[plan.victim].user
        fake = lookalike_id(thread, random.Random(f"{plan.bogus_seed}:thread"))
        # A thread id the prober used itself (a colliding one) names its own thread: then
        # there is nothing to tell apart, and a resume would replay its own events.
        supported = link.threads_supported
        if supported and thread not in link.ledger.threads_used:
            for ident in (thread, fake):
                await link.history(ident)
                await link.resume(ident)
            await link.ping()
            self.thread_lookups.append(self._thread_lookup(link, plan.user, victim, thread, fake))
        self.thread_probes += 1
        self.probe_threads.add((plan.user, thread))
        run = plan.probe_run
        await link.start(run, thread)
        answer = await link.wait_start(run.tag)
        if not supported:
            if answer.type == "agent_started" and answer.run_id is not None:
                await link.wait_end(answer.run_id)
            return
        if answer.type == "agent_started" and answer.run_id is not None:
            # This connection now follows a thread named like the victim's: a cancel must
            # still not reach the victim's run through it.
            before = len(link.replies(target.run_id)), len(link.replies(bogus))
            await link.cancel(target.run_id)
            await link.ping()
            still_open = await self._still_open(plan.victim, target.run_id)
            await link.cancel(bogus)
            await link.ping()
            real = link.replies(target.run_id)[before[0] :]
            fake_reply = link.replies(bogus)[before[1] :]
            self.probes.append(
                ProbeResult(
                    attacker=plan.user,
                    victim=victim,
                    run_id=target.run_id,
                    bogus_id=bogus,
                    real_reply=_first(real),
                    bogus_reply=_first(fake_reply),
                    victim_run_open=still_open,
                    following=True,
                )
            )
            await link.wait_end(answer.run_id)
        await link.history(thread)  # only the prober's own events may be in it
        await link.threads()

    @staticmethod
    def _thread_lookup(
        link: Link, attacker: str, victim: str, thread: str, fake: str
    ) -> ThreadProbe:
        return ThreadProbe(
            attacker=attacker,
            victim=victim,
            thread_id=thread,
            bogus_thread=fake,
            own_thread=False,
            history_real=_first(link.answers("history_page", thread)),
            history_bogus=_first(link.answers("history_page", fake)),
            resume_real=_first(link.answers("resumed", thread)),
            resume_bogus=_first(link.answers("resumed", fake)),
        )

    async def _still_open(self, victim: int, run_id: str) -> bool:
        """Whether ``run_id`` was still running when the server answered the probe.

        The server has answered a ping sent after the probe, so a pong on the victim's
        connection asked for now comes from after the server handled the probe; if the
        run's terminal event comes after that pong, the run had not ended then. (Exact
        for servers that keep one connection's frames in order, as chat.v1 requires.)
        """
        if self.ledgers[victim].terminal_of(run_id) == "run_cancelled":
            return True  # its owner never cancels a probed run: the probe ended it
        link = self.board.links.get(victim)
        if link is None or link.end_index(run_id) is not None:
            return False
        try:
            pong = await link.ping()
            await link.wait_end(run_id)
        except (FrameTimeout, LinkClosed):
            return False
        end = link.end_index(run_id)
        return end is not None and end > pong

    # -- after the run -------------------------------------------------------------------

    def report(
        self, *, seed: int, wall_time_s: float, complete: bool, notes: list[str]
    ) -> AuditReport:
        counts = [ledger.counts() for ledger in self.ledgers]
        planned = sum(len(p.runs) for p in self.plans) + self.thread_probes
        return AuditReport(
            url=self.config.url,
            seed=seed,
            users=len(self.plans),
            runs_per_user=self.config.runs,
            connections=self.connections,
            connect_failures=self.connect_failures,
            connect_retries=self.connect_retries,
            runs_planned=planned,
            runs_sent=sum(c.sent for c in counts),
            runs_started=sum(c.started for c in counts),
            runs_completed=sum(c.completed for c in counts),
            runs_cancelled=sum(c.cancelled for c in counts),
            runs_errored=sum(c.errored for c in counts),
            runs_rejected=sum(c.rejected for c in counts),
            runs_interrupted=sum(c.interrupted for c in counts),
            runs_lost=sum(c.lost for c in counts),
            cancels_sent=sum(c.cancels_sent for c in counts),
            frames_checked=sum(c.frames for c in counts),
            idor_probes=len(self.probes),
            runs_duplicate=sum(c.duplicates for c in counts),
            lookups_sent=sum(c.lookups for c in counts),
            thread_lookups=tuple(self.thread_lookups),
            idor_probes_live=sum(p.victim_run_open for p in self.probes),
            thread_probes=self.thread_probes,
            drops=self.drops,
            drops_planned=sum(p.drops for p in self.plans),
            wall_time_s=wall_time_s,
            complete=complete,
            violation_count=sum(ledger.violation_count for ledger in self.ledgers),
            violations=tuple(violations_with_owners(self.ledgers)),
            anomaly_count=sum(ledger.anomaly_count for ledger in self.ledgers),
            anomalies=tuple(a for ledger in self.ledgers for a in ledger.anomalies),
            probes=tuple(self.probes),
            notes=tuple(notes),
        )


async def run_audit(config: AuditConfig) -> AuditReport:
    """Audit the server at ``config.url``. Raises :class:`AuditError` when it cannot run
    (bad configuration, token source failing, server unreachable or not chat.v1)."""
    config.validate()
    seed = config.seed if config.seed is not None else secrets.randbits(64)
    plans = make_plans(config, seed)
    notes: list[str] = []
    if config.raise_fd_limit:
        note = raise_fd_limit(config.users)
        if note:
            notes.append(note)
    started = time.monotonic()
    audit: _Audit | None = None
    with trio.move_on_after(config.timeout_s) as overall:
        parallel = min(config.connect_concurrency, 8)
        tokens = await fetch_tokens(config, [plan.user for plan in plans], parallel=parallel)
        if config.token_command is not None:
            notes.append(
                f"--token-command ran {len(tokens)} times in {time.monotonic() - started:.1f} s"
            )
        audit = _Audit(config, plans, canary_index(plans), tokens)
        await audit.preflight()
        await audit.run()
    if audit is None:
        raise AuditError(f"could not get tokens within --timeout {config.timeout_s:g} s")
    if overall.cancelled_caught:
        notes.append(f"stopped by --timeout {config.timeout_s:g} s: the results are partial")
    cross_check(audit.ledgers, audit.probes, audit.probe_threads, audit.thread_lookups)
    return audit.report(
        seed=seed,
        wall_time_s=time.monotonic() - started,
        complete=not overall.cancelled_caught,
        notes=notes,
    )


def _first(frames: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return frames[0] if frames else None
