"""End-to-end isolation: many users at once through the real server, every frame checked.

Each user has its own token, a random marker in every text and thread id it sends,
several overlapping runs, some of them cancelled, and some users probe another
user's live run with ``cancel``. A small pure checker (:class:`UserLedger`) judges
every frame one user receives; the negative control proves it can fail.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from app import RunningServer, Settings, mint_token, serve

SECRET: Final = b"isolation-e2e-test-secret-0123456789"
#: Per agent step: runs last 4 steps, long enough to overlap and be cancelled mid-run
#: even while 120 users saturate the loop with frames.
AGENT_DELAY_MS: Final = 600.0
MAX_RUNS: Final = 4
#: How long a user waits for an answer or an event before going on without it.
PROBE_REPLY_S: Final = 10.0
#: The run slot a user never cancels: the one attackers probe (a victim starts it first).
PROBED_SLOT: Final = 0

RUN_EVENT_TYPES: Final = frozenset(
    {
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_error",
        "run_cancelled",
    }
)
TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})

Frame = dict[str, Any]


# -- the checker: pure, no I/O ------------------------------------------------


@attrs.define
class _Sent:
    text: str
    thread_id: str | None


@attrs.define
class _Run:
    client_id: str
    thread_id: str
    text: str
    last_seq: int = 1
    terminal: str | None = None
    cancel_sent: bool = False
    cancel_after_end: bool = False  # then it must be answered run_not_found
    cancel_answered: bool = False


class UserLedger:
    """Everything one user's connection may legitimately receive, and what it did receive.

    Feed it what the user sent (:meth:`sent_message`, :meth:`sent_cancel`) and every
    frame it received (:meth:`observe`, in order), then call :meth:`finish`.
    Violations are evidence strings naming the user, the frame and the problem.
    """

    def __init__(self, user_id: str, marker: str, others: Mapping[str, str]) -> None:
        """``others`` maps every other user's id to its marker."""
        self.user_id = user_id
        self.marker = marker
        self._foreign = {m: uid for uid, m in others.items() if uid != user_id}
        self.frames = 0
        self.connection_id: str | None = None
        self.runs: dict[str, _Run] = {}
        self.run_of_client: dict[str, str] = {}
        self.given_threads: set[str] = set()  # thread ids the server chose for our runs
        self.probe_replies: dict[str, list[Frame]] = {}
        self.found: list[tuple[str, str]] = []
        self._sent: dict[str, _Sent] = {}
        self._finished = False

    # What the user sent.

    def sent_message(self, client_id: str, text: str, thread_id: str | None) -> None:
        self._sent[client_id] = _Sent(text, thread_id)

    def sent_cancel(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.cancel_sent = True
            run.cancel_after_end = run.terminal is not None
        else:  # not ours: another user's run, or one that never existed
            self.probe_replies.setdefault(run_id, [])

    # What the user received.

    @property
    def violations(self) -> list[str]:
        return [evidence for _, evidence in self.found]

    @property
    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.found}

    def flag_end(self, kind: str, detail: str) -> None:
        """Record a problem seen outside any frame (the connection itself)."""
        self._flag(kind, detail)

    def _flag(self, kind: str, detail: str, text: str | None = None) -> None:
        where = f"frame #{self.frames}" if text is not None else "at end"
        excerpt = f" -- {text[:200]}" if text is not None else ""
        self.found.append((kind, f"{self.user_id} {where}: [{kind}] {detail}{excerpt}"))

    def observe(self, message: str | bytes) -> Frame | None:
        """Check one received frame; returns it parsed (None if it is not a JSON object)."""
        self.frames += 1
        if not isinstance(message, str):
            self._flag("bad-frame", "a binary frame", repr(message))
            return None
        text = message
        for marker, owner in self._foreign.items():
            if marker in text:
                self._flag("foreign-marker", f"carries {owner}'s marker {marker}", text)
        try:
            frame = json.loads(text)
        except ValueError:
            self._flag("bad-frame", "not JSON", text)
            return None
        if not isinstance(frame, dict):
            self._flag("bad-frame", "not a JSON object", text)
            return None
        kind = frame.get("type")
        if self.frames == 1 and kind != "connection_ready":
            self._flag("ready-not-first", f"first frame is {kind!r}", text)
        if kind == "connection_ready":
            self._on_ready(frame, text)
        elif kind in RUN_EVENT_TYPES:
            self._on_run_event(frame, text)
        elif kind == "error":
            self._on_error(frame, text)
        elif kind not in {"pong", "auth_ok"}:
            self._flag("unknown-type", f"unexpected frame type {kind!r}", text)
        return frame

    def _on_ready(self, frame: Frame, text: str) -> None:
        if self.connection_id is not None:
            self._flag("duplicate-ready", "a second connection_ready", text)
        if frame.get("user_id") != self.user_id:
            self._flag("wrong-user", f"connection_ready for user {frame.get('user_id')!r}", text)
        connection_id = frame.get("connection_id")
        if self.connection_id is None and isinstance(connection_id, str):
            self.connection_id = connection_id

    def _on_run_event(self, frame: Frame, text: str) -> None:
        kind = frame["type"]
        run_id, seq, thread_id = frame.get("run_id"), frame.get("seq"), frame.get("thread_id")
        if kind == "agent_started":
            self._on_started(frame, text)
            return
        run = self.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            self._flag("foreign-run", f"{kind} for run {run_id!r} never announced here", text)
            return
        if run.terminal is not None:
            problem = "duplicate-terminal" if kind in TERMINAL_TYPES else "after-terminal"
            self._flag(problem, f"{kind} for run {run_id} after its {run.terminal}", text)
            return
        if thread_id != run.thread_id:
            self._flag("foreign-thread", f"thread {thread_id!r}, run is on {run.thread_id!r}", text)
        if seq != run.last_seq + 1:
            self._flag("seq-gap", f"run {run_id}: seq {seq!r} after {run.last_seq}", text)
        if isinstance(seq, int):
            run.last_seq = seq
        echoed = None
        if kind == "tool_executing":
            echoed = _text_of(frame.get("tool_input"))
        elif kind == "agent_completed":
            echoed = _text_of(frame.get("result"))
        if kind in {"tool_executing", "agent_completed"} and echoed != run.text:
            self._flag("foreign-text", f"run {run_id} echoes {echoed!r}, sent {run.text!r}", text)
        if kind in TERMINAL_TYPES:
            self._on_terminal(run, frame, text)

    def _on_started(self, frame: Frame, text: str) -> None:
        run_id, client_id = frame.get("run_id"), frame.get("client_id")
        sent = self._sent.get(client_id) if isinstance(client_id, str) else None
        if sent is None or not isinstance(client_id, str):
            self._flag("foreign-start", f"agent_started for client_id {client_id!r}", text)
            return
        if client_id in self.run_of_client:
            self._flag("duplicate-start", f"second agent_started for {client_id}", text)
            return
        if not isinstance(run_id, str) or run_id in self.runs:
            self._flag("reused-run-id", f"agent_started with run_id {run_id!r}", text)
            return
        if frame.get("seq") != 1:
            self._flag("seq-gap", f"agent_started with seq {frame.get('seq')!r}", text)
        thread_id = frame.get("thread_id")
        if not isinstance(thread_id, str) or (
            sent.thread_id is not None and thread_id != sent.thread_id
        ):
            self._flag("foreign-thread", f"thread {thread_id!r}, sent {sent.thread_id!r}", text)
        if sent.thread_id is None and isinstance(thread_id, str):
            self.given_threads.add(thread_id)
        self.runs[run_id] = _Run(client_id, str(thread_id), sent.text)
        self.run_of_client[client_id] = run_id

    def _on_terminal(self, run: _Run, frame: Frame, text: str) -> None:
        kind = frame["type"]
        run.terminal = kind
        if kind == "run_cancelled":
            if not run.cancel_sent:
                self._flag("foreign-cancel", "run cancelled although this user never asked", text)
            elif frame.get("reason") != "cancelled_by_client":
                self._flag("cancel-reason", f"reason {frame.get('reason')!r}", text)
        elif kind == "agent_error":
            self._flag("agent-error", "run failed", text)

    def _on_error(self, frame: Frame, text: str) -> None:
        ref = frame.get("ref")
        if isinstance(ref, str) and ref in self.probe_replies:
            self.probe_replies[ref].append(frame)
            if len(self.probe_replies[ref]) > 1:
                self._flag("duplicate-error", f"second reply to cancel {ref}", text)
            return
        run = self.runs.get(ref) if isinstance(ref, str) else None
        if run is None or not run.cancel_sent:
            self._flag("unexpected-error", f"error with ref {ref!r}", text)
            return
        if run.cancel_answered:
            self._flag("duplicate-error", f"second reply to cancel {ref}", text)
        run.cancel_answered = True
        # A cancel is refused only once the run's terminal is queued, hence already received.
        if run.terminal is None:
            self._flag("cancel-refused", f"cancel of own live run {ref} refused", text)
        if frame.get("code") != "run_not_found":
            self._flag("unexpected-error", f"cancel of {ref} answered {frame.get('code')!r}", text)

    def finish(self) -> list[str]:
        """Check what must have happened by the end of the connection; returns all violations."""
        if self._finished:
            return self.violations
        self._finished = True
        if self.connection_id is None:
            self._flag("no-ready", "no connection_ready")
        for client_id in self._sent:
            if client_id not in self.run_of_client:
                self._flag("no-start", f"no agent_started for client_id {client_id}")
        for run_id, run in self.runs.items():
            if run.terminal is None:
                self._flag("no-terminal", f"run {run_id} never ended")
            if run.cancel_after_end and not run.cancel_answered:
                self._flag("no-reply", f"cancel of own ended run {run_id} never answered")
        for run_id, replies in self.probe_replies.items():
            if len(replies) != 1 or replies[0].get("code") != "run_not_found":
                self._flag("probe-answer", f"cancel of foreign/unknown {run_id}: {replies!r}")
        return self.violations


def _text_of(value: object) -> object:
    return value.get("text") if isinstance(value, dict) else None


def _first(frames: list[Frame] | None) -> Frame | None:
    return frames[0] if frames else None


def run_not_found_shape(reply: Frame | None, ref: str) -> Frame | str:
    """The error payload without its ``ref`` echo, or why it is not a run_not_found for ``ref``."""
    if reply is None:
        return "no reply"
    if reply.get("ref") != ref or reply.get("code") != "run_not_found":
        return f"unexpected reply {reply!r}"
    return {key: value for key, value in reply.items() if key != "ref"}


# -- driving real users ----------------------------------------------------------


@attrs.frozen
class Plan:
    """What one simulated user does."""

    index: int
    user_id: str
    marker: str
    rounds: int
    threads: tuple[str | None, ...]  # per run slot; None lets the server pick
    cancel_now: int | None = None  # slot cancelled as soon as it starts
    cancel_mid: int | None = None  # slot cancelled once it has sent its second event
    cancel_late: int | None = None  # slot cancelled after it ended
    victim: int | None = None  # user whose PROBED_SLOT run this user tries to cancel


@attrs.define
class Probe:
    attacker: str
    victim: str
    round_no: int
    run_id: str
    bogus_id: str
    live: bool  # proven: the run had not ended on the server when the probe was answered


@attrs.define
class Board:
    """Test-side shared state: what attackers learn, the round barrier, and the oracle."""

    plans: list[Plan]
    clients: dict[int, Client] = attrs.field(factory=dict)
    live_runs: dict[tuple[int, int], str] = attrs.field(factory=dict)
    announced: defaultdict[tuple[int, int], trio.Event] = attrs.field(
        factory=lambda: defaultdict(trio.Event)
    )
    probes: list[Probe] = attrs.field(factory=list)
    all_connected: trio.Event = attrs.field(factory=trio.Event)
    active_runs: int = 0
    peak_runs: int = 0
    #: Cancelled when a user's connection dies: waiting for it would only time out.
    users_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    finished_users: set[int] = attrs.field(factory=set)
    aborted: str | None = None
    _probed_rounds: defaultdict[int, trio.Event] = attrs.field(
        factory=lambda: defaultdict(trio.Event)
    )
    _finished: defaultdict[int, int] = attrs.field(factory=lambda: defaultdict(int))
    _finished_rounds: defaultdict[int, trio.Event] = attrs.field(
        factory=lambda: defaultdict(trio.Event)
    )

    @property
    def victims(self) -> frozenset[int]:
        return frozenset(plan.victim for plan in self.plans if plan.victim is not None)

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason
        self.users_scope.cancel()

    def arrive(self, client: Client, index: int) -> None:
        self.clients[index] = client
        if len(self.clients) == len(self.plans):
            self.all_connected.set()

    def probed(self, probe: Probe, round_no: int) -> None:
        self.probes.append(probe)
        attackers = sum(plan.victim is not None for plan in self.plans)
        if sum(p.round_no == round_no for p in self.probes) == attackers:
            self._probed_rounds[round_no].set()

    async def wait_probed(self, round_no: int) -> None:
        if any(plan.victim is not None for plan in self.plans):
            await self._probed_rounds[round_no].wait()

    async def finish_round(self, round_no: int) -> None:
        """Wait until every user has finished ``round_no``: the next one starts quiet."""
        self._finished[round_no] += 1
        if self._finished[round_no] == len(self.plans):
            self._finished_rounds[round_no].set()
        await self._finished_rounds[round_no].wait()


class Client:
    """One user's connection: a reader feeding the ledger, and waits on what it saw."""

    def __init__(self, ws: WebSocketConnection, ledger: UserLedger, board: Board) -> None:
        self.ws = ws
        self.ledger = ledger
        self.board = board
        self._seen: defaultdict[tuple[str, str], trio.Event] = defaultdict(trio.Event)
        self._pings = 0
        self._pongs = 0
        self.closing = False
        #: Frame number (in this connection's order) at which each pong / run terminal arrived.
        self.pong_frame: dict[int, int] = {}
        self.end_frame: dict[str, int] = {}

    async def read_all(self) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed as exc:
                if not self.closing:
                    reason = exc.reason
                    self.ledger.flag_end("closed", f"server closed the connection: {reason}")
                    self.board.abort(f"{self.ledger.user_id}'s connection closed: {reason}")
                return
            frame = self.ledger.observe(message)
            if frame is not None:
                self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind in RUN_EVENT_TYPES:
            self._seen["event", f"{frame.get('run_id')}#{frame.get('seq')}"].set()
        if kind == "connection_ready":
            self._seen["ready", ""].set()
        elif kind == "pong":
            self._pongs += 1
            self.pong_frame[self._pongs] = self.ledger.frames
            self._seen["pong", str(self._pongs)].set()
        elif kind == "agent_started" and isinstance(frame.get("client_id"), str):
            self._seen["started", frame["client_id"]].set()
            self.board.active_runs += 1
            self.board.peak_runs = max(self.board.peak_runs, self.board.active_runs)
        elif kind in TERMINAL_TYPES and isinstance(frame.get("run_id"), str):
            self.end_frame[frame["run_id"]] = self.ledger.frames
            self.board.active_runs -= 1
            self._seen["end", frame["run_id"]].set()
        elif kind == "error" and isinstance(frame.get("ref"), str):
            self._seen["error", frame["ref"]].set()

    async def wait(self, what: str, key: str = "") -> None:
        await self._seen[what, key].wait()

    async def send(self, message: Frame) -> None:
        if message["type"] == "cancel":
            self.ledger.sent_cancel(message["run_id"])
        elif message["type"] == "user_message":
            self.ledger.sent_message(
                message["client_id"], message["text"], message.get("thread_id")
            )
        await self.ws.send_message(json.dumps(message))

    async def start_run(self, client_id: str, text: str, thread_id: str | None) -> None:
        message: Frame = {"type": "user_message", "text": text, "client_id": client_id}
        if thread_id is not None:
            message["thread_id"] = thread_id
        await self.send(message)

    async def started(self, client_id: str) -> str:
        """The run_id the server announced for ``client_id``, once it arrives."""
        await self.wait("started", client_id)
        return self.ledger.run_of_client[client_id]

    async def ping(self) -> int:
        """Round-trip a ping; returns the frame number of its pong.

        Frames of one connection keep their order, so every frame the server queued
        before it handled this ping has a lower number.
        """
        self._pings += 1
        number = self._pings
        await self.send({"type": "ping"})
        await self.wait("pong", str(number))
        return self.pong_frame[number]

    async def cancel(self, run_id: str) -> None:
        await self.send({"type": "cancel", "run_id": run_id})


def token_for(user_id: str) -> str:
    return mint_token(
        secret=SECRET, algorithm="HS256", subject=user_id, ttl_s=3600, now=time.time()
    )


async def drive_user(
    url: str, plan: Plan, ledger: UserLedger, board: Board, handshakes: trio.Semaphore
) -> None:
    headers = [(b"authorization", f"Bearer {token_for(plan.user_id)}".encode())]
    async with AsyncExitStack() as stack:
        async with handshakes:  # bounded handshakes: Hypercorn's listen backlog is 100
            ws = await stack.enter_async_context(open_websocket_url(url, extra_headers=headers))
        client = Client(ws, ledger, board)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_all)
            await client.wait("ready")
            board.arrive(client, plan.index)
            await board.all_connected.wait()  # every user is connected at once
            if plan.victim is not None:  # probes follow the victim's pace, not ours
                for round_no in range(plan.rounds):
                    nursery.start_soon(probe, client, plan, plan.victim, round_no)
            for round_no in range(plan.rounds):
                await play_round(client, plan, round_no)
                await board.finish_round(round_no)
            await client.ping()  # everything the server queued before has been read
            client.closing = True
            await ws.aclose()
    board.finished_users.add(plan.index)


def _text(plan: Plan, round_no: int, slot: int) -> str:
    return f"{plan.user_id} {plan.marker} round {round_no} slot {slot}: count us"


async def play_round(client: Client, plan: Plan, round_no: int) -> None:
    board = client.board
    slots = range(len(plan.threads))
    client_ids = [f"c{round_no}.{slot}.{plan.marker}" for slot in slots]
    run_ids: dict[int, str] = {}

    async def start(slot: int) -> None:
        await client.start_run(client_ids[slot], _text(plan, round_no, slot), plan.threads[slot])

    if plan.index in board.victims:
        # Phase 1, light load: the run others will probe. It starts alone so that the
        # probes provably reach the server while it is live; it overlaps phase 2.
        await start(PROBED_SLOT)
        run_ids[PROBED_SLOT] = await client.started(client_ids[PROBED_SLOT])
        board.live_runs[plan.index, round_no] = run_ids[PROBED_SLOT]
        board.announced[plan.index, round_no].set()
    await board.wait_probed(round_no)
    # Phase 2, full load: every user starts its other runs at once.
    for slot in slots:
        if slot not in run_ids:
            await start(slot)
    for slot in slots:
        if slot not in run_ids:
            run_ids[slot] = await client.started(client_ids[slot])
            if slot == plan.cancel_now:
                await client.cancel(run_ids[slot])
    if plan.cancel_mid is not None:  # once the run has made progress: its agent_thinking
        with trio.move_on_after(PROBE_REPLY_S):  # a missing seq 2 shows as a seq-gap
            await client.wait("event", f"{run_ids[plan.cancel_mid]}#2")
        await client.cancel(run_ids[plan.cancel_mid])
    if plan.cancel_late is not None:
        await client.wait("end", run_ids[plan.cancel_late])
        await client.cancel(run_ids[plan.cancel_late])
        with trio.move_on_after(PROBE_REPLY_S):  # a missing reply is evidence (no-reply)
            await client.wait("error", run_ids[plan.cancel_late])
    for slot in slots:
        await client.wait("end", run_ids[slot])


async def probe(client: Client, plan: Plan, victim: int, round_no: int) -> None:
    """Cancel another user's live run (known from the board), and a run that never existed."""
    board = client.board
    await board.announced[victim, round_no].wait()
    run_id = board.live_runs[victim, round_no]
    bogus_id = "run_" + secrets.token_urlsafe(12)
    await client.cancel(run_id)
    with trio.move_on_after(PROBE_REPLY_S):  # no reply is evidence, not a hang
        await client.wait("error", run_id)
    # Proof of liveness (by the harness, not the attacker): a ping on the victim's
    # connection, sent after the probe was answered, is answered before the run's terminal.
    victim_client = board.clients[victim]
    pong_at = await victim_client.ping()
    live = victim_client.end_frame.get(run_id, pong_at + 1) > pong_at
    await client.cancel(bogus_id)
    with trio.move_on_after(PROBE_REPLY_S):
        await client.wait("error", bogus_id)
    victim_id = board.plans[victim].user_id
    board.probed(Probe(plan.user_id, victim_id, round_no, run_id, bogus_id, live), round_no)


@attrs.frozen
class Outcome:
    ledgers: list[UserLedger]
    board: Board
    seconds: float
    timed_out: bool


async def run_users(plans: list[Plan], *, delay_ms: float, deadline_s: float) -> Outcome:
    markers = {plan.user_id: plan.marker for plan in plans}
    ledgers = [UserLedger(plan.user_id, plan.marker, markers) for plan in plans]
    board = Board(plans)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        jwt_secret=SECRET,
        agent_delay_ms=delay_ms,
        max_runs=MAX_RUNS,
        rate_per_s=1000,
        rate_burst=1000,
        # No keepalive pings during the test: trio-websocket 0.12 answers a ping that
        # crosses its own close frame and dies with wsproto's LocalProtocolError.
        ping_interval_s=600,
    )
    started = time.monotonic()
    try:
        with trio.fail_after(deadline_s):
            async with trio.open_nursery() as nursery:
                server: RunningServer = await nursery.start(serve, settings)
                url = server.ws_url + settings.path
                handshakes = trio.Semaphore(32)
                with board.users_scope:
                    async with trio.open_nursery() as users:
                        for plan, ledger in zip(plans, ledgers, strict=True):
                            users.start_soon(drive_user, url, plan, ledger, board, handshakes)
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:  # still judge what arrived: a missing event shows as evidence
        return Outcome(ledgers, board, time.monotonic() - started, timed_out=True)
    return Outcome(ledgers, board, time.monotonic() - started, timed_out=False)


def check_outcome(outcome: Outcome) -> list[str]:
    """Every violation of every user, plus the cross-user and IDOR checks."""
    evidence = [v for ledger in outcome.ledgers for v in ledger.finish()]
    if outcome.timed_out:
        waiting = [
            p.user_id for p in outcome.board.plans if p.index not in outcome.board.finished_users
        ]
        evidence.insert(0, f"timed out after {outcome.seconds:.1f}s; still busy: {waiting[:10]}")
    if outcome.board.aborted is not None:
        evidence.insert(0, f"aborted: {outcome.board.aborted}")
    by_user = {ledger.user_id: ledger for ledger in outcome.ledgers}
    owners: dict[str, str] = {}
    for ledger in outcome.ledgers:
        for run_id in ledger.runs:
            if run_id in owners:
                evidence.append(f"run_id {run_id} given to {owners[run_id]} and {ledger.user_id}")
            owners[run_id] = ledger.user_id
    given = {t: ledger.user_id for ledger in outcome.ledgers for t in ledger.given_threads}
    for ledger in outcome.ledgers:
        for run_id, run in ledger.runs.items():
            owner = given.get(run.thread_id, ledger.user_id)
            if owner != ledger.user_id:
                evidence.append(
                    f"{ledger.user_id}'s run {run_id} is on thread {run.thread_id}, "
                    f"which the server gave {owner}"
                )
    connections = [ledger.connection_id for ledger in outcome.ledgers]
    if len(set(connections)) != len(connections):
        evidence.append(f"connection ids not unique: {connections}")
    for p in outcome.board.probes:
        replies = by_user[p.attacker].probe_replies
        real = run_not_found_shape(_first(replies.get(p.run_id)), p.run_id)
        bogus = run_not_found_shape(_first(replies.get(p.bogus_id)), p.bogus_id)
        if real != bogus or isinstance(real, str):
            evidence.append(
                f"{p.attacker} cancelling {p.victim}'s run {p.run_id} got {real!r}; "
                f"a never-existing id got {bogus!r}"
            )
        victim_run = by_user[p.victim].runs.get(p.run_id)
        if victim_run is None or victim_run.terminal != "agent_completed":
            ended = victim_run and victim_run.terminal
            evidence.append(f"{p.victim}'s run {p.run_id} probed by {p.attacker} ended {ended!r}")
        if not p.live:
            evidence.append(f"{p.attacker}'s probe of {p.run_id} may have come after the run ended")
    return evidence


def assert_isolated(outcome: Outcome) -> None:
    evidence = check_outcome(outcome)
    shown = "\n".join(evidence[:10])
    assert not evidence, f"{len(evidence)} isolation violations, first ones:\n{shown}"


def _plans_many(users: int, rounds: int) -> list[Plan]:
    plans = []
    for i in range(users):
        marker = secrets.token_hex(8)
        # Slot 3: server-chosen thread; slots 0 and 2 share a thread, slot 1 has its own.
        threads = (f"thr-{marker}-a", f"thr-{marker}-b", f"thr-{marker}-a", None)
        plans.append(
            Plan(
                index=i,
                user_id=f"user-{i}",
                marker=marker,
                rounds=rounds,
                threads=threads,
                cancel_now=1 if i % 3 == 0 else None,
                cancel_mid=2 if i % 3 == 1 else None,
                cancel_late=3 if i % 5 == 0 else None,
                victim=(i + 1) % users if i % 4 == 1 else None,
            )
        )
    return plans


# -- tests -------------------------------------------------------------------------

N_USERS: Final = 120
ROUNDS: Final = 1


async def test_many_concurrent_users_stay_isolated() -> None:
    plans = _plans_many(N_USERS, ROUNDS)
    outcome = await run_users(plans, delay_ms=AGENT_DELAY_MS, deadline_s=45)
    assert_isolated(outcome)

    ledgers = outcome.ledgers
    runs = [run for ledger in ledgers for run in ledger.runs.values()]
    terminals = [run.terminal for run in runs]
    assert len(runs) == N_USERS * ROUNDS * MAX_RUNS
    assert terminals.count("run_cancelled") > 0, "no run was actually cancelled mid-run"
    assert len(outcome.board.probes) == ROUNDS * sum(p.victim is not None for p in plans)
    assert outcome.board.peak_runs > MAX_RUNS * N_USERS // 2, "runs did not overlap"
    print(
        f"\n{N_USERS} users, {len(runs)} runs ({terminals.count('run_cancelled')} cancelled), "
        f"{len(outcome.board.probes)} IDOR probes, {sum(le.frames for le in ledgers)} frames, "
        f"peak {outcome.board.peak_runs} live runs, {outcome.seconds:.1f}s"
    )


async def test_users_sharing_a_thread_id_stay_isolated() -> None:
    shared = ("shared-thread",) * MAX_RUNS
    plans = [
        Plan(0, "user-0", secrets.token_hex(8), 2, shared, cancel_now=1, victim=1),
        Plan(1, "user-1", secrets.token_hex(8), 2, shared, cancel_mid=2, victim=0),
    ]
    outcome = await run_users(plans, delay_ms=100, deadline_s=20)
    assert_isolated(outcome)
    for plan, ledger in zip(plans, outcome.ledgers, strict=True):
        assert len(ledger.runs) == 2 * MAX_RUNS
        assert {run.thread_id for run in ledger.runs.values()} == {"shared-thread"}
        assert all(plan.marker in run.text for run in ledger.runs.values())
    first, second = (set(ledger.runs) for ledger in outcome.ledgers)
    assert not first & second


# -- negative control: the checker must be able to fail ------------------------------

OWN, OTHER = "m1m1m1m1", "m2m2m2m2"  # user-1's and user-2's markers
THREAD = f"thr-{OWN}"
TEXT = f"hello {OWN}"


def _event(kind: str, seq: int, run_id: str = "run_a", thread: str = THREAD, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields, "run_id": run_id, "thread_id": thread, "seq": seq})


def _error(ref: str | None, code: str = "run_not_found", message: str = "no such run") -> str:
    return json.dumps({"type": "error", "code": code, "message": message, "ref": ref})


def _control_ledger() -> UserLedger:
    """user-1, connected, with one announced run ``run_a`` on its own thread."""
    ledger = UserLedger("user-1", OWN, {"user-1": OWN, "user-2": OTHER})
    ledger.observe(
        json.dumps({"type": "connection_ready", "user_id": "user-1", "connection_id": "c"})
    )
    ledger.sent_message("c1", TEXT, THREAD)
    ledger.observe(_event("agent_started", 1, agent="echo", client_id="c1"))
    return ledger


def test_checker_accepts_a_clean_stream() -> None:
    ledger = _control_ledger()
    ledger.observe(_event("agent_thinking", 2, thought="hm"))
    ledger.observe(_event("tool_executing", 3, tool_name="w", tool_input={"text": TEXT}))
    ledger.observe(_event("agent_completed", 4, result={"text": TEXT}))
    ledger.sent_cancel("run_a")  # late: refused after the terminal, which is fine
    ledger.observe(_error("run_a"))
    ledger.sent_cancel("run_of_someone_else")
    ledger.observe(_error("run_of_someone_else"))
    ledger.observe(json.dumps({"type": "pong"}))
    assert ledger.finish() == []
    assert ledger.probe_replies["run_of_someone_else"][0]["code"] == "run_not_found"


def test_checker_reports_each_violation() -> None:
    done = _event("agent_completed", 2, result={"text": TEXT})
    cases: list[tuple[str, list[str | bytes]]] = [
        ("foreign-marker", [_event("agent_thinking", 2, thought=f"hi {OTHER}")]),
        ("foreign-run", [_event("agent_thinking", 2, run_id="run_of_user_2", thread="t")]),
        ("seq-gap", [_event("agent_thinking", 3, thought="x")]),
        ("duplicate-terminal", [done, _event("agent_completed", 3, result={"text": TEXT})]),
        ("after-terminal", [done, _event("agent_thinking", 3, thought="x")]),
        ("wrong-user", [json.dumps({"type": "connection_ready", "user_id": "user-2"})]),
        ("duplicate-ready", [json.dumps({"type": "connection_ready", "user_id": "user-1"})]),
        ("foreign-thread", [_event("agent_thinking", 2, thread=f"thr-{OTHER}", thought="x")]),
        ("foreign-start", [_event("agent_started", 1, run_id="run_b", client_id="c-of-user-2")]),
        ("foreign-text", [_event("agent_completed", 2, result={"text": "someone else's"})]),
        ("foreign-cancel", [_event("run_cancelled", 2, reason="cancelled_by_client")]),
        ("agent-error", [_event("agent_error", 2, error={"code": "x", "message": "y"})]),
        ("unexpected-error", [_error(None, code="invalid_json")]),
        ("unexpected-error", [_error("run_a")]),  # an error about our run we never cancelled
        ("unknown-type", [json.dumps({"type": "debug_dump", "runs": []})]),
        ("bad-frame", ["not json"]),
        ("bad-frame", [b"{}"]),
        ("no-terminal", []),
    ]
    for kind, frames in cases:
        ledger = _control_ledger()
        for frame in frames:
            ledger.observe(frame)
        ledger.finish()
        assert kind in ledger.kinds, (kind, ledger.violations)
        assert all(v.startswith("user-1 ") for v in ledger.violations)


def test_checker_reports_several_violations_in_one_stream() -> None:
    ledger = _control_ledger()
    ledger.observe(_event("agent_thinking", 2, thought=f"leaked {OTHER}"))  # frame #3
    ledger.observe(_event("agent_thinking", 1, run_id="run_of_user_2", thread="t"))
    ledger.observe(_event("tool_completed", 5, tool_name="w", results={}))  # gap: 3, 4 missing
    ledger.observe(_event("agent_completed", 6, result={"text": TEXT}))
    ledger.observe(_event("run_cancelled", 7, reason="cancelled_by_client"))
    assert ledger.finish() == ledger.violations
    assert {"foreign-marker", "foreign-run", "seq-gap", "duplicate-terminal"} <= ledger.kinds
    # The evidence names who saw whose marker, in which frame.
    assert ledger.violations[0].startswith("user-1 frame #3: [foreign-marker] carries user-2's")


def test_checker_reports_missing_starts_and_unanswered_cancels() -> None:
    ledger = _control_ledger()
    ledger.sent_message("c2", TEXT, None)
    ledger.sent_cancel("run_of_user_2")
    ledger.observe(_event("agent_completed", 2, result={"text": TEXT}))
    ledger.sent_cancel("run_a")
    ledger.finish()
    assert ledger.kinds == {"no-start", "probe-answer", "no-reply"}


def test_checker_reports_a_refused_cancel_of_a_live_run() -> None:
    ledger = _control_ledger()
    ledger.sent_cancel("run_a")
    ledger.observe(_error("run_a"))
    assert "cancel-refused" in ledger.kinds


def test_idor_shape_comparison_can_fail() -> None:
    same = {"type": "error", "code": "run_not_found", "message": "no such run"}
    assert run_not_found_shape({**same, "ref": "r1"}, "r1") == run_not_found_shape(
        {**same, "ref": "r2"}, "r2"
    )
    leaky = {**same, "message": "run belongs to another user", "ref": "r1"}
    assert run_not_found_shape(leaky, "r1") != run_not_found_shape({**same, "ref": "r2"}, "r2")
    assert isinstance(run_not_found_shape(None, "r1"), str)
    assert isinstance(run_not_found_shape({**same, "ref": "r9"}, "r1"), str)


def test_cross_user_checks_can_fail() -> None:
    """check_outcome, fed fabricated ledgers: shared run ids, a borrowed thread, a leaky probe."""
    plans = [
        Plan(0, "user-1", OWN, 1, (THREAD,), victim=1),
        Plan(1, "user-2", OTHER, 1, (None,)),
    ]
    markers = {"user-1": OWN, "user-2": OTHER}
    first, second = (UserLedger(p.user_id, p.marker, markers) for p in plans)
    for ledger, connection in ((first, "conn_1"), (second, "conn_2")):
        ready = {"type": "connection_ready", "user_id": ledger.user_id, "connection_id": connection}
        ledger.observe(json.dumps(ready))
    second.sent_message("c2", "hi", None)
    second.observe(_event("agent_started", 1, thread="thr_given_to_2", client_id="c2"))
    second.observe(_event("run_cancelled", 2, thread="thr_given_to_2", reason="x"))
    # user-1 is handed the same run_id, on the thread the server chose for user-2.
    first.sent_message("c1", TEXT, None)
    first.observe(_event("agent_started", 1, thread="thr_given_to_2", client_id="c1"))
    first.observe(_event("agent_completed", 2, thread="thr_given_to_2", result={"text": TEXT}))
    first.sent_cancel("run_b")
    first.observe(_error("run_b"))
    first.sent_cancel("run_a_live")
    first.observe(_error("run_a_live", code="forbidden", message="that run is not yours"))
    board = Board(plans)
    board.probes.append(Probe("user-1", "user-2", 0, "run_a_live", "run_b", live=False))
    evidence = check_outcome(Outcome([first, second], board, 1.0, timed_out=False))
    joined = "\n".join(evidence)
    assert "run_id run_a given to user-1 and user-2" in joined
    assert "which the server gave user-2" in joined
    assert "user-1 cancelling user-2's run run_a_live got" in joined
    assert "probed by user-1 ended None" in joined
    assert "may have come after the run ended" in joined
    assert "[foreign-cancel]" in joined  # user-2's run was cancelled without its asking
