"""Stateful property test: one connection's events never reach another connection.

A Hypothesis :class:`RuleBasedStateMachine` drives 3-4 users (one of them may hold two
connections at once) over the in-memory session layer -- ``run_session`` with a
``MemoryTransport`` pair per connection, no sockets. Its rules interleave connecting,
reconnecting, messages (some on a thread id every user shares), cancels of the
connection's own runs, of ended runs, of random ids and of *another connection's live
run* (an IDOR probe), pings, stalled and drained client reads (some clients buffer at
most 0-1 frames, so the server's sends block), abrupt disconnects and time advancing.

After every rule, :func:`check_transcript` judges everything each connection received:
``connection_ready`` names that connection and user; every ``run_id`` was announced by
that connection's own ``agent_started`` for a message it sent; no other user's canary
and no other connection's marker appears anywhere in a frame; ``seq`` runs 1..n per run
without gaps; at most one terminal event per run; errors answer only its own cancels.
At teardown every message of a still-open connection has a run with exactly one
terminal event, every probe got the same ``run_not_found`` as a random id, and once all
connections are closed no task of theirs is left.

Driving Trio from Hypothesis: stateful rules are synchronous, so one Trio event loop
runs for the whole life of a machine in a background thread (:class:`TrioThread`).
Each rule runs one async function there and waits for it with a wall-clock bound.
The loop uses a frozen :class:`trio.testing.MockClock`: time moves only when the
``advance_time`` rule (or teardown) jumps it, and every call ends at a quiet point
(``wait_all_tasks_blocked``), so between rules the loop is idle and the main thread can
read the model. Real time never matters, which keeps examples fast and deterministic.

The negative controls at the bottom show the checker fails on leaky transcripts: a
client wrapper that copies one connection's frames to another's transcript (the
session layer made leaky in the test only), and targeted forgeries for each rule.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import secrets
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, TypeVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app import (
    AuthConfig,
    EchoAgent,
    MemoryClient,
    MemoryTransport,
    PeerClosed,
    ServerLifecycle,
    Services,
    Settings,
    TokenVerifier,
    UserContext,
    memory_transport_pair,
    run_session,
)

SECRET: Final = b"stateful-isolation-test-secret-0123456789"
NOW: Final = 1_800_000_000.0
#: Wall-clock bound on every call into the Trio thread (a call normally takes ~1 ms).
REAL_TIMEOUT_S: Final = 10.0
#: Mock seconds a stalled client may block the server's sender before close 1008.
SEND_TIMEOUT_S: Final = 5.0
#: Huge limits: nothing but the rules under test may end a run or a connection.
FOREVER_S: Final = 1e7

TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})
RUN_TYPES: Final = (
    frozenset({"agent_started", "agent_thinking", "tool_executing", "tool_completed"})
    | TERMINAL_TYPES
)
ECHO_RUN: Final = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
SHARED_THREAD: Final = "shared"
ID_REGEX: Final = r"[A-Za-z0-9_.:\-]{1,128}"

Frame = dict[str, Any]
T = TypeVar("T")


# -- the checker: pure, no I/O -------------------------------------------------


class IsolationViolation(AssertionError):
    """A connection received something that is not its own."""


@attrs.frozen
class Sent:
    """One ``user_message`` a connection sent."""

    text: str
    thread_id: str | None


@attrs.define(eq=False)
class Transcript:
    """What one connection's client sent and received, in order."""

    user_id: str
    connection_id: str
    #: client_id -> message; client ids are unique across the whole machine.
    messages: dict[str, Sent] = attrs.Factory(dict)
    #: The run_id of every ``cancel`` sent (own, ended, random or another connection's).
    cancels: list[str] = attrs.Factory(list)
    pings: int = 0
    frames: list[str] = attrs.Factory(list)
    #: (code, reason) once the client saw the server close the connection.
    close: tuple[int | None, str] | None = None


@attrs.define
class RunView:
    client_id: str
    thread_id: str
    seq: int
    terminal: Frame | None = None


@attrs.define
class View:
    """What :func:`check_transcript` learned from a transcript that passed."""

    runs: dict[str, RunView] = attrs.Factory(dict)
    errors: list[Frame] = attrs.Factory(list)
    pongs: int = 0

    def errors_for(self, ref: str) -> list[Frame]:
        return [e for e in self.errors if e.get("ref") == ref]

    def live_runs(self) -> list[str]:
        return [run_id for run_id, run in self.runs.items() if run.terminal is None]


def check_transcript(t: Transcript, foreign: Collection[str]) -> View:
    """Raise :class:`IsolationViolation` unless every frame of ``t`` belongs to ``t``.

    ``foreign`` holds the canaries of every other user and the markers of every other
    connection (including the same user's other connections); none may appear in any
    frame of ``t``.
    """
    view = View()
    started: set[str] = set()
    where = f"connection {t.connection_id} of user {t.user_id!r}"
    for index, raw in enumerate(t.frames):

        def fail(problem: str, index: int = index, raw: str = raw) -> IsolationViolation:
            return IsolationViolation(f"{where}, frame {index}: {problem}\n    {raw}")

        leaked = [marker for marker in foreign if marker in raw]
        if leaked:
            raise fail(f"carries another user's or connection's marker {leaked[0]!r}")
        frame: Frame = json.loads(raw)
        kind = frame.get("type")
        if index == 0 or kind == "connection_ready":
            if index != 0:
                raise fail("a second connection_ready")
            if kind != "connection_ready":
                raise fail("the first frame is not connection_ready")
            got = (frame.get("user_id"), frame.get("connection_id"), frame.get("protocol"))
            expected = (t.user_id, t.connection_id, "chat.v1")
            if got != expected:
                raise fail(f"connection_ready is for {got}, expected {expected}")
        elif kind == "agent_started":
            run_id, client_id = frame.get("run_id"), frame.get("client_id")
            sent = t.messages.get(client_id) if isinstance(client_id, str) else None
            if not isinstance(run_id, str) or run_id in view.runs:
                raise fail("agent_started announces a run_id already announced")
            if sent is None or client_id in started:
                raise fail("agent_started for a message this connection never sent")
            assert isinstance(client_id, str)
            started.add(client_id)
            if frame.get("seq") != 1:
                raise fail("agent_started is not seq 1")
            thread = frame.get("thread_id")
            if sent.thread_id is not None and thread != sent.thread_id:
                raise fail(f"thread_id {thread!r}, the message asked for {sent.thread_id!r}")
            if sent.thread_id is None and not (isinstance(thread, str) and thread[:4] == "thr_"):
                raise fail(f"thread_id {thread!r} is not a fresh server thread id")
            assert isinstance(thread, str)
            view.runs[run_id] = RunView(client_id, thread, 1)
        elif kind in RUN_TYPES:
            run_id = frame.get("run_id")
            run = view.runs.get(run_id) if isinstance(run_id, str) else None
            if run is None:
                raise fail(f"{kind} for a run_id never announced by this connection")
            assert isinstance(run_id, str)
            if run.terminal is not None:
                raise fail(
                    f"{kind} after the run's terminal {run.terminal['type']} "
                    "(at most one terminal event per run)"
                )
            if frame.get("seq") != run.seq + 1:
                raise fail(f"seq {frame.get('seq')} follows seq {run.seq} (gap or repeat)")
            if frame.get("thread_id") != run.thread_id:
                raise fail(f"thread_id changed within the run from {run.thread_id!r}")
            run.seq += 1
            sent = t.messages[run.client_id]
            if kind == "tool_executing" and frame.get("tool_input") != {"text": sent.text}:
                raise fail("the run works on text this connection did not send for it")
            words = len(sent.text.split())
            if kind == "agent_completed" and frame.get("result") != {
                "text": sent.text,
                "words": words,
            }:
                raise fail("the run's result is not about the message that started it")
            if kind == "run_cancelled" and run_id not in t.cancels:
                raise fail("run_cancelled for a run this connection never asked to cancel")
            if kind in TERMINAL_TYPES:
                run.terminal = frame
        elif kind == "error":
            ref = frame.get("ref")
            if frame.get("code") != "run_not_found" or not isinstance(ref, str):
                raise fail("an error that none of this connection's requests explain")
            if len(view.errors_for(ref)) >= t.cancels.count(ref):
                raise fail(f"more run_not_found for {ref!r} than cancels this connection sent")
            view.errors.append(frame)
        elif kind == "pong":
            view.pongs += 1
            if view.pongs > t.pings:
                raise fail("more pongs than pings this connection sent")
        else:
            raise fail(f"unexpected frame type {kind!r}")
    return view


def without_ref(frame: Frame) -> Frame:
    return {key: value for key, value in frame.items() if key != "ref"}


# -- clients -------------------------------------------------------------------


@attrs.define(eq=False)
class Recorder:
    """A client that records every frame it receives into its transcript.

    ``leak_to`` exists for the negative control only: transcripts that also get a copy
    of every frame, simulating a server that delivers one connection's frames on
    another connection.
    """

    client: MemoryClient
    transcript: Transcript
    leak_to: list[Transcript] = attrs.Factory(list)

    async def receive(self) -> str:
        try:
            text = await self.client.receive()
        except PeerClosed as closed:
            self.transcript.close = (closed.code, closed.reason)
            raise
        self.transcript.frames.append(text)
        for other in self.leak_to:
            other.frames.append(text)
        return text


def make_services(*, agent_delay_s: float, log: logging.Logger) -> Services:
    settings = Settings(
        jwt_secret=SECRET,
        max_runs=1_000,
        rate_per_s=1e6,
        rate_burst=1_000_000,
        rate_abuse_limit=1_000_000,
        send_timeout_s=SEND_TIMEOUT_S,
        idle_timeout_s=FOREVER_S,
        run_timeout_s=FOREVER_S,
        # Runs end with their connection: the model checks that nothing of it remains.
        resume_grace_s=0.0,
    )
    settings.validate()
    return Services(
        settings=settings,
        verifier=TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",))),
        agent=EchoAgent(delay_s=agent_delay_s),
        log=log,
        wall_clock=lambda: NOW,
    )


def count_tasks() -> int:
    """Every task of the running Trio loop, system tasks included."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo, seen = [root], 0
    while todo:
        task = todo.pop()
        seen += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return seen


async def settle() -> None:
    """Wait until every task is blocked: with the clock frozen, nothing more happens."""
    await trio.testing.wait_all_tasks_blocked()


# -- one Trio loop in a thread ---------------------------------------------------


class TrioThread:
    """A Trio event loop with a frozen mock clock, running in a daemon thread."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self.error: BaseException | None = None
        self._started: concurrent.futures.Future[
            tuple[trio.lowlevel.TrioToken, trio.Nursery, trio.Event]
        ] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, name="trio-stateful")
        self._thread.daemon = True
        self._thread.start()
        self._token, self.nursery, self._stop = self._started.result(timeout=REAL_TIMEOUT_S)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # reported by close(); a thread must not raise
            self.error = exc
            if not self._started.done():
                self._started.set_exception(exc)

    async def _main(self) -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._started.set_result((trio.lowlevel.current_trio_token(), nursery, stop))
            await stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` as a task of the loop; wait for it at most REAL_TIMEOUT_S."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()

        async def runner() -> None:
            try:
                with scope:
                    done.set_result(await fn())
            except Exception as exc:
                done.set_exception(exc)
            finally:
                if not done.done():
                    done.set_exception(AssertionError("the call was cancelled"))

        self._token.run_sync_soon(self.nursery.start_soon, runner)
        try:
            return done.result(timeout=REAL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            self._token.run_sync_soon(scope.cancel)
            raise AssertionError(
                f"the Trio side did not finish within {REAL_TIMEOUT_S} s of real time"
            ) from None

    def close(self) -> None:
        """Cancel everything still running in the loop and join its thread."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._stop.set)
        self._thread.join(REAL_TIMEOUT_S)
        if self._thread.is_alive():
            raise AssertionError("the Trio thread did not stop")
        if self.error is not None:
            raise AssertionError("the Trio loop crashed") from self.error


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- the model -----------------------------------------------------------------


@attrs.define(eq=False)
class User:
    user_id: str
    canary: str
    room: int  # simultaneous connections this user may hold


@attrs.define(eq=False, repr=False)
class Conn:
    user: User
    marker: str
    recorder: Recorder
    buffer: float
    reader: trio.CancelScope | None = None
    ever_paused: bool = False
    disconnected: bool = False
    ended: bool = False
    session_error: Exception | None = None
    #: run_ids whose cancel must be answered ``run_not_found``.
    expect_not_found: list[str] = attrs.Factory(list)
    #: (another connection's live run_id, a random id) cancelled together.
    probes: list[tuple[str, str]] = attrs.Factory(list)
    view: View = attrs.Factory(View)
    checked: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"<{self.transcript.connection_id} of {self.user.user_id!r}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # keeps Hypothesis' report of the drawn steps short

    @property
    def transcript(self) -> Transcript:
        return self.recorder.transcript

    @property
    def is_open(self) -> bool:
        """Neither side closed it as far as the client has seen."""
        return not self.disconnected and self.transcript.close is None

    @property
    def paused(self) -> bool:
        return self.reader is None

    def frames_since(self, mark: int) -> list[Frame]:
        return [json.loads(raw) for raw in self.transcript.frames[mark:]]

    def complete(self) -> bool:
        """Every message has a run and every run its terminal event."""
        view = self.view
        started = {run.client_id for run in view.runs.values()}
        return started == set(self.transcript.messages) and not view.live_runs()


def require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


BUFFERS: Final = st.sampled_from([math.inf, 1, 0])
RANDOM_IDS: Final = st.from_regex(r"run_[A-Za-z0-9_\-]{16}", fullmatch=True) | st.from_regex(
    ID_REGEX, fullmatch=True
)
EXTRA_TEXT: Final = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)


class IsolationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.users: list[User] = []
        self.conns: list[Conn] = []
        self.delay = 0.0
        self.baseline_tasks = 0
        self.serial = 0
        self.broken = False
        self.handler = _ListHandler()
        self.log = logging.getLogger("tests.isolation.stateful")
        self.log.addHandler(self.handler)
        self.services: Services | None = None
        self.lifecycle: ServerLifecycle | None = None
        self.loop = TrioThread()

    # -- plumbing ----------------------------------------------------------------

    def _do(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            self.loop.call(fn)
        except BaseException:
            self.broken = True
            raise

    def _open(self) -> list[Conn]:
        return [c for c in self.conns if c.is_open]

    def _users_with_room(self) -> list[User]:
        return [u for u in self.users if sum(c.user is u for c in self._open()) < u.room]

    def _foreign(self, conn: Conn) -> list[str]:
        canaries = [u.canary for u in self.users if u is not conn.user]
        return canaries + [c.marker for c in self.conns if c is not conn]

    def _own_live_runs(self) -> list[tuple[Conn, str]]:
        return [
            (c, run_id)
            for c in self._open()
            for run_id in c.view.live_runs()
            if run_id not in c.transcript.cancels
        ]

    def _ended_runs(self) -> list[tuple[Conn, str]]:
        """Own runs whose cancel must get run_not_found: ended, or cancel already sent."""
        return [
            (c, run_id)
            for c in self._open()
            for run_id, run in c.view.runs.items()
            if run.terminal is not None or run_id in c.transcript.cancels
        ]

    def _probe_pairs(self) -> list[tuple[Conn, Conn, str]]:
        """(attacker, victim connection, victim's live run) across distinct connections."""
        return [
            (attacker, victim, run_id)
            for attacker in self._open()
            for victim in self._open()
            if victim is not attacker
            for run_id in victim.view.live_runs()
        ]

    async def _serve(self, transport: MemoryTransport, context: UserContext, conn: Conn) -> None:
        assert self.services is not None
        assert self.lifecycle is not None
        try:
            await run_session(transport, context, self.services, self.lifecycle)
        except Exception as exc:  # run_session must not raise; the invariant reports it
            conn.session_error = exc
        finally:
            conn.ended = True

    async def _read(self, conn: Conn, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            conn.reader = scope
            task_status.started()
            try:
                while True:
                    await conn.recorder.receive()
            except PeerClosed:
                pass
            finally:
                if conn.reader is scope:
                    conn.reader = None

    async def _connect(self, user: User, buffer: float, paused: bool) -> None:
        self.serial += 1
        connection_id = f"conn_{self.serial}"
        transport, client = memory_transport_pair(client_buffer=buffer)
        transcript = Transcript(user.user_id, connection_id)
        conn = Conn(user, "mark" + secrets.token_hex(8), Recorder(client, transcript), buffer)
        self.conns.append(conn)
        context = UserContext(user.user_id, connection_id, NOW + FOREVER_S, "authorization")
        self.loop.nursery.start_soon(self._serve, transport, context, conn)
        if paused:
            conn.ever_paused = True
        else:
            await self.loop.nursery.start(self._read, conn)
        await settle()
        if not paused:
            require(len(transcript.frames) == 1, f"{connection_id}: no connection_ready alone")

    async def _disconnect(self, conn: Conn) -> None:
        if conn.reader is not None:
            conn.reader.cancel()
            conn.reader = None
        conn.disconnected = True
        await conn.recorder.client.disconnect()
        await settle()
        # Nothing of the connection remains, without any time passing.
        require(conn.ended, f"{conn.transcript.connection_id}: session outlived its client")

    async def _send_message(self, conn: Conn, extra: str, thread_id: str | None) -> None:
        t = conn.transcript
        text = f"{conn.user.canary} {conn.marker} {extra}"
        client_id = f"{t.connection_id}.m{len(t.messages)}"
        t.messages[client_id] = Sent(text, thread_id)
        mark = len(t.frames)
        message = {"type": "user_message", "text": text, "client_id": client_id}
        if thread_id is not None:
            message["thread_id"] = thread_id
        await conn.recorder.client.send_json(message)
        await settle()
        if conn.paused:
            return
        new = conn.frames_since(mark)
        expected = list(ECHO_RUN) if self.delay == 0 else ["agent_started"]
        require([f["type"] for f in new] == expected, f"{client_id}: got {new}")
        require(new[0].get("client_id") == client_id, f"{client_id}: got {new[0]}")
        require(len({f["run_id"] for f in new}) == 1, f"{client_id}: runs mixed: {new}")

    async def _send_cancel(self, conn: Conn, *run_ids: str) -> int:
        mark = len(conn.transcript.frames)
        for run_id in run_ids:
            conn.transcript.cancels.append(run_id)
            await conn.recorder.client.send_json({"type": "cancel", "run_id": run_id})
        await settle()
        return mark

    def _expect_not_found(self, conn: Conn, mark: int, run_ids: list[str]) -> None:
        conn.expect_not_found.extend(run_ids)
        if conn.paused:
            return  # answered once drained; checked at teardown
        answers = conn.frames_since(mark)
        require(
            [(a.get("type"), a.get("code"), a.get("ref")) for a in answers]
            == [("error", "run_not_found", run_id) for run_id in run_ids],
            f"expected run_not_found for {run_ids}, got {answers}",
        )
        require(
            all(without_ref(a) == without_ref(answers[0]) for a in answers),
            f"run_not_found answers differ: {answers}",
        )

    # -- rules -------------------------------------------------------------------

    @initialize(
        user_ids=st.lists(
            st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=3, max_size=4, unique=True
        ),
        multi=st.booleans(),
        delay=st.sampled_from([1.0, 0.5, 0.0]),
    )
    def start(self, user_ids: list[str], multi: bool, delay: float) -> None:
        self.delay = delay
        self.users = [
            User(uid, "canary" + secrets.token_hex(8), 2 if multi and i == 0 else 1)
            for i, uid in enumerate(user_ids)
        ]
        self.services = make_services(agent_delay_s=delay, log=self.log)

        async def start() -> None:
            self.lifecycle = ServerLifecycle(max_connections=100)
            self.baseline_tasks = count_tasks()
            for user in self.users:
                await self._connect(user, math.inf, paused=False)
            for conn in self.conns:  # a run each, live until time advances (delay > 0)
                await self._send_message(conn, "hello", SHARED_THREAD)

        self._do(start)

    @precondition(lambda self: bool(self._users_with_room()))
    @rule(data=st.data(), buffer=BUFFERS, paused=st.booleans())
    def connect(self, data: st.DataObject, buffer: float, paused: bool) -> None:
        user = data.draw(st.sampled_from(self._users_with_room()), label="user")
        if sum(c.user is user for c in self._open()) == 1:
            event("a user holds two connections at once")
        self._do(lambda: self._connect(user, buffer, paused))

    @precondition(lambda self: bool(self._open()))
    @rule(data=st.data(), buffer=BUFFERS, paused=st.booleans())
    def reconnect(self, data: st.DataObject, buffer: float, paused: bool) -> None:
        conn = data.draw(st.sampled_from(self._open()), label="conn")

        async def reconnect() -> None:
            await self._disconnect(conn)
            await self._connect(conn.user, buffer, paused)

        self._do(reconnect)

    @precondition(lambda self: bool(self._open()))
    @rule(
        data=st.data(),
        extra=EXTRA_TEXT,
        thread=st.sampled_from([None, SHARED_THREAD, "own"]),
    )
    def send_message(self, data: st.DataObject, extra: str, thread: str | None) -> None:
        conn = data.draw(st.sampled_from(self._open()), label="conn")
        thread_id = f"t_{conn.user.user_id}" if thread == "own" else thread
        self._do(lambda: self._send_message(conn, extra, thread_id))

    @precondition(lambda self: bool(self._own_live_runs()))
    @rule(data=st.data())
    def cancel_own_run(self, data: st.DataObject) -> None:
        conn, run_id = data.draw(st.sampled_from(self._own_live_runs()), label="run")

        async def cancel() -> None:
            mark = await self._send_cancel(conn, run_id)
            if conn.paused:
                return  # it may have ended meanwhile; the checker and teardown judge it
            new = conn.frames_since(mark)
            require(
                [(f["type"], f.get("run_id"), f.get("reason")) for f in new]
                == [("run_cancelled", run_id, "cancelled_by_client")],
                f"cancel of own live run {run_id}: got {new}",
            )

        self._do(cancel)

    @precondition(lambda self: bool(self._ended_runs()))
    @rule(data=st.data())
    def cancel_ended_run(self, data: st.DataObject) -> None:
        conn, run_id = data.draw(st.sampled_from(self._ended_runs()), label="run")

        async def cancel() -> None:
            mark = await self._send_cancel(conn, run_id)
            self._expect_not_found(conn, mark, [run_id])

        self._do(cancel)

    @precondition(lambda self: bool(self._open()))
    @rule(data=st.data(), run_id=RANDOM_IDS)
    def cancel_random_id(self, data: st.DataObject, run_id: str) -> None:
        conn = data.draw(st.sampled_from(self._open()), label="conn")

        async def cancel() -> None:
            mark = await self._send_cancel(conn, run_id)
            self._expect_not_found(conn, mark, [run_id])

        self._do(cancel)

    @precondition(lambda self: bool(self._probe_pairs()))
    @rule(data=st.data(), random_id=RANDOM_IDS)
    def cancel_another_connections_run(self, data: st.DataObject, random_id: str) -> None:
        """IDOR probe: cancel another connection's live run, and a random id."""
        attacker, victim, run_id = data.draw(st.sampled_from(self._probe_pairs()), label="probe")
        event(
            "probe: same user's other connection"
            if victim.user is attacker.user
            else "probe: another user's run"
        )

        async def probe() -> None:
            before = list(victim.transcript.frames)
            attacker.probes.append((run_id, random_id))
            mark = await self._send_cancel(attacker, run_id, random_id)
            require(
                victim.transcript.frames == before,
                f"the victim's connection reacted to another connection's cancel of {run_id}",
            )
            self._expect_not_found(attacker, mark, [run_id, random_id])

        self._do(probe)

    @precondition(lambda self: bool(self._open()))
    @rule(data=st.data())
    def ping(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self._open()), label="conn")

        async def ping() -> None:
            conn.transcript.pings += 1
            mark = len(conn.transcript.frames)
            await conn.recorder.client.send_json({"type": "ping"})
            await settle()
            if not conn.paused:
                new = conn.frames_since(mark)
                require(new == [{"type": "pong"}], f"ping: got {new}")

        self._do(ping)

    @precondition(lambda self: any(not c.paused for c in self._open()))
    @rule(data=st.data())
    def stall_reads(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from([c for c in self._open() if not c.paused]), label="conn")
        if conn.buffer < 2:
            event("stall a client that buffers at most one frame")

        async def stall() -> None:
            assert conn.reader is not None
            conn.reader.cancel()
            conn.reader = None
            conn.ever_paused = True
            await settle()

        self._do(stall)

    @precondition(lambda self: any(c.paused for c in self._open()))
    @rule(data=st.data())
    def drain_reads(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from([c for c in self._open() if c.paused]), label="conn")

        async def drain() -> None:
            await self.loop.nursery.start(self._read, conn)
            await settle()

        self._do(drain)

    @precondition(lambda self: bool(self._open()))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self._open()), label="conn")
        self._do(lambda: self._disconnect(conn))

    # Only while time matters: a run waits on the clock or a client stalls the server.
    @precondition(lambda self: any(c.view.live_runs() or c.paused for c in self._open()))
    @rule(dt=st.sampled_from([0.5, 1.0, 2.5]))
    def advance_time(self, dt: float) -> None:
        async def advance() -> None:
            self.loop.clock.jump(dt)
            await settle()

        self._do(advance)

    # -- invariants --------------------------------------------------------------

    @invariant()
    def every_frame_belongs_to_its_connection(self) -> None:
        try:
            self._check_all()
        except BaseException:
            self.broken = True
            raise

    def _check_all(self) -> None:
        require(not self.handler.records, f"server logged: {self.handler.records}")
        for conn in self.conns:
            t = conn.transcript
            foreign = self._foreign(conn)
            key = (len(t.frames), len(t.messages), len(t.cancels), t.pings, len(foreign))
            if key != conn.checked:
                conn.view = check_transcript(t, foreign)
                conn.checked = key
            require(conn.session_error is None, f"run_session raised {conn.session_error!r}")
            if t.close is not None:
                event("server closed a stalled client (slow_consumer)")
                require(
                    t.close == (1008, "slow_consumer") and conn.ever_paused,
                    f"{t.connection_id} closed {t.close}",
                )
            for run in conn.view.runs.values():
                require(
                    run.terminal is None or run.terminal["type"] != "agent_error",
                    f"{t.connection_id}: {run.terminal}",
                )
            for probed, random_id in conn.probes:
                answers = conn.view.errors_for(probed)[:1] + conn.view.errors_for(random_id)[:1]
                if len(answers) == 2:
                    require(
                        without_ref(answers[0]) == without_ref(answers[1]),
                        f"another connection's run {probed} is answered {answers[0]}, "
                        f"a random id {answers[1]}",
                    )

    # -- teardown ----------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken and self.services is not None:
                self._do(self._finish_runs)
                self._check_all()
                self._check_answers()
                self._do(self._close_all)
        finally:
            self.log.removeHandler(self.handler)
            self.loop.close()

    async def _finish_runs(self) -> None:
        for conn in self._open():
            if conn.paused:
                await self.loop.nursery.start(self._read, conn)
        await settle()
        for _ in range(100):
            open_conns = self._open()
            for conn in open_conns:
                conn.view = check_transcript(conn.transcript, self._foreign(conn))
            if all(conn.complete() for conn in open_conns):
                return
            self.loop.clock.jump(max(self.delay, 1.0))
            await settle()
        raise AssertionError("runs of open connections did not end")

    def _check_answers(self) -> None:
        for conn in self._open():
            t, view = conn.transcript, conn.view
            where = t.connection_id
            require(conn.complete(), f"{where}: a message without a run or a run without end")
            require(view.pongs == t.pings, f"{where}: {t.pings} pings, {view.pongs} pongs")
            wanted = Counter(conn.expect_not_found)
            got = Counter(str(e["ref"]) for e in view.errors)
            require(not wanted - got, f"{where}: unanswered cancels {wanted - got}")
            for probed, random_id in conn.probes:
                require(
                    bool(view.errors_for(probed)) and bool(view.errors_for(random_id)),
                    f"{where}: probe of {probed} unanswered",
                )

    async def _close_all(self) -> None:
        for conn in self.conns:
            if not conn.disconnected:
                await self._disconnect(conn)
        await settle()
        require(all(conn.ended for conn in self.conns), "a session outlived its connection")
        require(
            count_tasks() == self.baseline_tasks,
            f"{count_tasks() - self.baseline_tasks} tasks left after every connection closed",
        )


# Each example is ~30 rules, each one round trip to the Trio thread (a few ms); 40
# examples take ~5 s on an idle 2-core machine. No health check needs suppressing.
IsolationMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestIsolationMachine = IsolationMachine.TestCase


# -- negative controls: the checker can fail -------------------------------------------


@attrs.define(eq=False)
class Scripted:
    """One connection of the scripted scenario: a run to its end, then a ping."""

    name: str
    canary: str
    marker: str
    recorder: Recorder
    transport: MemoryTransport


async def scripted_scenario(leak: tuple[str, str] | None = None) -> dict[str, Scripted]:
    """alice-1, alice-2 (same user) and bob, all open at once; each runs a message and pings.

    With ``leak=(src, dst)``, every frame ``src`` receives after its ``connection_ready``
    is also recorded as received by ``dst``: the session layer made leaky (run events and
    replies delivered on the wrong connection), in this test only.
    """
    services = make_services(agent_delay_s=0.0, log=logging.getLogger("tests.isolation.scripted"))
    lifecycle = ServerLifecycle(max_connections=10)
    canaries = {"alice": "canary" + secrets.token_hex(8), "bob": "canary" + secrets.token_hex(8)}
    conns: dict[str, Scripted] = {}
    for name in ("alice-1", "alice-2", "bob"):
        user = name.split("-")[0]
        transport, client = memory_transport_pair()
        recorder = Recorder(client, Transcript(user, f"conn_{name}"))
        marker = "mark" + secrets.token_hex(8)
        conns[name] = Scripted(name, canaries[user], marker, recorder, transport)

    async def exercise(conn: Scripted) -> None:
        t = conn.recorder.transcript
        client_id = f"{conn.name}.m1"
        text = f"{conn.canary} {conn.marker} hello there"
        t.messages[client_id] = Sent(text, SHARED_THREAD)
        message = {"type": "user_message", "text": text, "client_id": client_id}
        await conn.recorder.client.send_json({**message, "thread_id": SHARED_THREAD})
        while json.loads(await conn.recorder.receive())["type"] not in TERMINAL_TYPES:
            pass
        t.pings += 1
        await conn.recorder.client.send_json({"type": "ping"})
        while json.loads(await conn.recorder.receive())["type"] != "pong":
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for conn in conns.values():
                t = conn.recorder.transcript
                context = UserContext(t.user_id, t.connection_id, NOW + FOREVER_S, "authorization")
                nursery.start_soon(run_session, conn.transport, context, services, lifecycle)
            for conn in conns.values():
                assert json.loads(await conn.recorder.receive())["type"] == "connection_ready"
            if leak is not None:
                conns[leak[0]].recorder.leak_to.append(conns[leak[1]].recorder.transcript)
            for conn in conns.values():  # one after another: a deterministic transcript
                await exercise(conn)
            nursery.cancel_scope.cancel()
    return conns


def foreign_of(conns: dict[str, Scripted], name: str) -> list[str]:
    me = conns[name]
    return [c.canary for c in conns.values() if c.canary != me.canary] + [
        c.marker for c in conns.values() if c is not me
    ]


async def test_checker_accepts_the_clean_scenario() -> None:
    conns = await scripted_scenario()
    for name, conn in conns.items():
        view = check_transcript(conn.recorder.transcript, foreign_of(conns, name))
        assert conn_types(conn) == ["connection_ready", *ECHO_RUN, "pong"]
        assert [run.terminal is not None for run in view.runs.values()] == [True]


def conn_types(conn: Scripted) -> list[str]:
    return [json.loads(raw)["type"] for raw in conn.recorder.transcript.frames]


@pytest.mark.parametrize(
    ("src", "dst"), [("alice-1", "bob"), ("bob", "alice-1"), ("alice-1", "alice-2")]
)
async def test_checker_catches_cross_connection_delivery(src: str, dst: str) -> None:
    conns = await scripted_scenario(leak=(src, dst))
    check_transcript(conns[src].recorder.transcript, foreign_of(conns, src))
    with pytest.raises(IsolationViolation, match=r"marker|never sent|never announced"):
        check_transcript(conns[dst].recorder.transcript, foreign_of(conns, dst))


def _frame_of(conn: Scripted, kind: str) -> str:
    return next(raw for raw in conn.recorder.transcript.frames if json.loads(raw)["type"] == kind)


def _replace(conn: Scripted, kind: str, new: Callable[[Frame], Frame]) -> None:
    frames = conn.recorder.transcript.frames
    index = frames.index(_frame_of(conn, kind))
    frames[index] = json.dumps(new(json.loads(frames[index])))


Forgery = Callable[[Scripted, Scripted], None]
FORGERIES: Final[dict[str, tuple[Forgery, str]]] = {
    "another connection's connection_ready": (
        lambda me, other: me.recorder.transcript.frames.append(other.recorder.transcript.frames[0]),
        "a second connection_ready",
    ),
    "connection_ready naming another user": (
        lambda me, other: _replace(me, "connection_ready", lambda f: {**f, "user_id": "zed"}),
        "connection_ready is for",
    ),
    "another connection's run event, no marker in it": (
        lambda me, other: me.recorder.transcript.frames.append(_frame_of(other, "agent_thinking")),
        "never announced by this connection",
    ),
    "another connection's agent_started": (
        lambda me, other: me.recorder.transcript.frames.append(_frame_of(other, "agent_started")),
        "never sent",
    ),
    "another user's canary in a connection-level frame": (
        lambda me, other: me.recorder.transcript.frames.append(
            json.dumps({"type": "pong", "note": other.canary})
        ),
        "marker",
    ),
    "a second terminal event": (
        lambda me, other: me.recorder.transcript.frames.append(_frame_of(me, "agent_completed")),
        "at most one terminal",
    ),
    "a gap in seq": (
        lambda me, other: me.recorder.transcript.frames.remove(_frame_of(me, "agent_thinking")),
        "gap or repeat",
    ),
    "a run cancelled by someone else": (
        lambda me, other: _replace(
            me,
            "agent_completed",
            lambda f: {
                "type": "run_cancelled",
                "reason": "cancelled_by_client",
                **{k: f[k] for k in ("run_id", "thread_id", "seq")},
            },
        ),
        "never asked to cancel",
    ),
    "another message's result": (
        lambda me, other: _replace(
            me, "agent_completed", lambda f: {**f, "result": {"text": "x", "words": 1}}
        ),
        "not about the message",
    ),
    "an error no request explains": (
        lambda me, other: me.recorder.transcript.frames.append(
            json.dumps({"type": "error", "code": "run_not_found", "message": "x", "ref": "r"})
        ),
        "more run_not_found",
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_checker_catches_each_forgery(forgery: str) -> None:
    conns = await scripted_scenario()
    forge, message = FORGERIES[forgery]
    forge(conns["bob"], conns["alice-1"])
    with pytest.raises(IsolationViolation, match=message):
        check_transcript(conns["bob"].recorder.transcript, foreign_of(conns, "bob"))
