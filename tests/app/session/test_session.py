import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from app import (
    AgentThinking,
    AuthConfig,
    EchoAgent,
    MemoryClient,
    MemoryTransport,
    PeerClosed,
    RunContext,
    ServerLifecycle,
    Services,
    Settings,
    TokenVerifier,
    UserContext,
    memory_transport_pair,
    mint_token,
    run_session,
)
from app.agents._agent import Emit
from app.services import Timer
from app.session._session import CLOCK_TICK_S, _Runner
from app.transports._frames import CLOSE_FLUSH_S

SECRET = b"k" * 32
NOW = 1_800_000_000.0


@attrs.define
class Connection:
    client: MemoryClient
    lifecycle: ServerLifecycle
    ended: trio.Event

    async def expect(self, kind: str) -> dict[str, Any]:
        event = await self.client.receive_json()
        assert event["type"] == kind, event
        return event

    async def closed(self) -> PeerClosed:
        while True:
            try:
                await self.client.receive()
            except PeerClosed as closed:
                return closed

    async def run_to_end(self, text: str = "hello there") -> list[dict[str, Any]]:
        await self.client.send_json({"type": "user_message", "text": text})
        events = [await self.client.receive_json()]
        while events[-1]["type"] not in {"agent_completed", "agent_error", "run_cancelled"}:
            events.append(await self.client.receive_json())
        return events


def token(sub: str = "alice", ttl: float = 3600) -> str:
    return mint_token(secret=SECRET, algorithm="HS256", subject=sub, ttl_s=ttl, now=NOW)


@asynccontextmanager
async def connect(
    *,
    agent: Any = None,
    client_buffer: float = math.inf,
    expires_in: float = 3600,
    lifecycle: ServerLifecycle | None = None,
    log: logging.Logger | None = None,
    wrap: Any = None,
    timer: bool = False,
    writes: bool = False,
    **overrides: Any,
) -> AsyncIterator[Connection]:
    settings = Settings(jwt_secret=SECRET, **overrides)
    verifier = TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",), leeway_s=0))
    services = Services(
        settings=settings,
        verifier=verifier,
        agent=agent or EchoAgent(delay_s=settings.agent_delay_ms / 1000),
        log=log or logging.getLogger("test.session"),
        wall_clock=lambda: NOW,
    )
    lifecycle = lifecycle or ServerLifecycle(max_connections=10)
    transport, client = memory_transport_pair(client_buffer=client_buffer)
    if wrap is not None:
        transport = wrap(transport)
    context = UserContext("alice", "conn_test", NOW + expires_in, "authorization")
    ended = trio.Event()

    async def session() -> None:
        try:
            await run_session(transport, context, services, lifecycle)
        finally:
            ended.set()

    async with trio.open_nursery() as nursery:
        if timer:  # as serve() runs it; without it, sleeps and deadlines are Trio's own
            await nursery.start(lifecycle.timer.run)
        if writes:  # as serve() runs it; without it, a run's frames are written at once
            await nursery.start(lifecycle.writes.run)
        nursery.start_soon(session)
        conn = Connection(client, lifecycle, ended)
        ready = await conn.expect("connection_ready")
        assert (ready["user_id"], ready["protocol"]) == ("alice", "chat.v1")
        yield conn
        nursery.cancel_scope.cancel()


async def test_round_trip() -> None:
    async with connect() as conn:
        events = await conn.run_to_end("hello big world")
    assert [e["type"] for e in events] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert len({e["run_id"] for e in events}) == 1
    assert events[2]["tool_name"] == "word_count"
    assert events[3]["results"] == {"words": 3}
    assert events[-1]["result"] == {"text": "hello big world", "words": 3}


async def test_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(idle_timeout_s=30) as conn:
        start = trio.current_time()
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1000, "idle_timeout")
        assert trio.current_time() - start == pytest.approx(30)
        await conn.ended.wait()


async def test_client_frames_reset_idle_timer(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(idle_timeout_s=30) as conn:
        start = trio.current_time()
        for _ in range(3):
            await trio.sleep(20)
            await conn.client.send_json({"type": "ping"})
            await conn.expect("pong")
        closed = await conn.closed()
        assert closed.reason == "idle_timeout"
        assert trio.current_time() - start == pytest.approx(90)


async def test_pong_timeout_closes_dead_peer(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(ping_interval_s=10, pong_timeout_s=5) as conn:
        await trio.sleep(25)  # two healthy pings
        assert not conn.ended.is_set()
        conn.client.responsive = False
        start = trio.current_time()
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1001, "pong_timeout")
        assert trio.current_time() - start <= 15 + 1e-6


class Wrapped:
    """A memory transport seen through a wrapper; the subclasses below change one call."""

    def __init__(self, inner: MemoryTransport) -> None:
        self._inner = inner
        self.pings = inner.pings
        self.immediate_writes = inner.immediate_writes

    async def receive(self) -> str:
        return await self._inner.receive()

    def queue(self, frames: Sequence[bytes]) -> None:
        self._inner.queue(frames)

    def backlog(self) -> int:
        return self._inner.backlog()

    def write_now(self) -> bool:
        return self._inner.write_now()

    async def flush(self, deadline: float) -> None:
        await self._inner.flush(deadline)

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        self.queue(frames)
        await self.flush(deadline)

    def ping(self, on_pong: Callable[[], None]) -> None:
        self._inner.ping(on_pong)

    async def close(self, code: int, reason: str) -> None:
        await self._inner.close(code, reason)


class PingRecorder(Wrapped):
    """A memory transport that notes when each ping is sent."""

    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner)
        self.sent_at: list[float] = []

    def ping(self, on_pong: Callable[[], None]) -> None:
        self.sent_at.append(trio.current_time())
        super().ping(on_pong)


async def test_connections_opened_together_do_not_ping_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorders: list[PingRecorder] = []

    def record(transport: Any) -> PingRecorder:
        recorders.append(PingRecorder(transport))
        return recorders[-1]

    start = trio.current_time()
    async with AsyncExitStack() as stack:
        for _ in range(8):
            await stack.enter_async_context(connect(ping_interval_s=10, wrap=record))
        await trio.sleep(35)
    firsts = [r.sent_at[0] - start for r in recorders]
    # The first ping at a random point of the first interval, then every interval.
    assert all(0 <= first <= 10 for first in firsts), firsts
    assert len({round(first, 3) for first in firsts}) > 1, firsts
    for r in recorders:
        gaps = [b - a for a, b in zip(r.sent_at, r.sent_at[1:], strict=False)]
        assert len(gaps) >= 2, r.sent_at
        # Up to a tick off: pings leave on the clock's grid (a float sum: a hair of slack).
        assert all(gap == pytest.approx(10, abs=CLOCK_TICK_S + 1e-9) for gap in gaps), r.sent_at


class LatePonger(Wrapped):
    """A memory transport whose peer's pongs arrive when the test says."""

    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner)
        self.on_pong: Callable[[], None] = lambda: None
        self.pinged = trio.Event()

    def ping(self, on_pong: Callable[[], None]) -> None:
        self.on_pong = on_pong
        self.pinged.set()


async def test_a_pong_that_arrives_spares_the_clock_its_wake_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pongers: list[LatePonger] = []
    clock_steps: list[float] = []

    class ClockSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("._clock"):
                clock_steps.append(trio.current_time())

    def wrap(transport: Any) -> LatePonger:
        pongers.append(LatePonger(transport))
        return pongers[-1]

    async def next_ping() -> LatePonger:
        ponger = pongers[0]
        with trio.fail_after(20):
            await ponger.pinged.wait()
        ponger.pinged = trio.Event()
        return ponger

    instrument = ClockSteps()
    async with connect(ping_interval_s=10, pong_timeout_s=5, wrap=wrap) as conn:
        (await next_ping()).on_pong()
        trio.lowlevel.add_instrument(instrument)
        try:
            for _ in range(2):
                ponger = await next_ping()
                await trio.sleep(1)
                ponger.on_pong()
            await next_ping()
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert not conn.ended.is_set()
    # Pings 2, 3 and 4 each woke the clock once; their pongs' deadlines did not.
    assert len(clock_steps) == 3, clock_steps


async def test_token_expiry(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(expires_in=60, leeway_s=5) as conn:
        start = trio.current_time()
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1008, "token_expired")
        assert trio.current_time() - start == pytest.approx(65)


async def test_reauthentication_moves_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(expires_in=60, leeway_s=0, idle_timeout_s=10_000) as conn:
        await conn.client.send_json({"type": "auth", "token": token(ttl=600)})
        ok = await conn.expect("auth_ok")
        assert ok["expires_at"] == int(NOW + 600)
        start = trio.current_time()
        closed = await conn.closed()
        assert closed.reason == "token_expired"
        assert trio.current_time() - start == pytest.approx(600)


async def test_reauthentication_with_other_subject_closes() -> None:
    async with connect() as conn:
        await conn.client.send_json({"type": "auth", "token": token(sub="mallory")})
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1008, "subject_mismatch")


async def test_reauthentication_with_bad_token_keeps_connection() -> None:
    async with connect() as conn:
        await conn.client.send_json({"type": "auth", "token": "not-a-jwt"})
        error = await conn.expect("error")
        assert error["code"] == "invalid_token"
        await conn.client.send_json({"type": "ping"})
        await conn.expect("pong")


async def test_binary_frame_closes_1003() -> None:
    async with connect() as conn:
        await conn.client.send_binary(b"\x00")
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1003, "binary_not_supported")


async def test_slow_consumer(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(client_buffer=1, send_timeout_s=7) as conn:
        # connection_ready sits unread in the client's one-frame buffer.
        for i in range(3):
            await conn.client.send_json({"type": "user_message", "text": f"run {i}"})
        start = trio.current_time()
        await conn.ended.wait()
        # Closed at the send timeout; the close then gives the peer CLOSE_FLUSH_S to take
        # what is queued ahead of the close frame (as the lean transport's linger does).
        assert trio.current_time() - start == pytest.approx(7 + CLOSE_FLUSH_S)
        # The close frame could not be delivered to a client that does not read;
        # the session still ended and released everything.


async def test_cancel_mid_run(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(agent_delay_ms=1000) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x", "client_id": "c1"})
        started = await conn.expect("agent_started")
        assert started["client_id"] == "c1"
        await conn.client.send_json({"type": "cancel", "run_id": started["run_id"]})
        cancelled = await conn.expect("run_cancelled")
        assert (cancelled["seq"], cancelled["reason"]) == (2, "cancelled_by_client")
        await conn.client.send_json({"type": "cancel", "run_id": started["run_id"]})
        assert (await conn.expect("error"))["code"] == "run_not_found"


@attrs.frozen
class ScriptedAgent:
    """An agent whose behaviour a test chooses."""

    behaviour: str
    name: str = "scripted"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        if self.behaviour == "raise":
            raise RuntimeError("secret internal detail")
        if self.behaviour == "hang":
            await trio.sleep_forever()
        if self.behaviour == "bad_event":
            await emit("not an event")  # type: ignore[arg-type]
        if self.behaviour == "not_json":
            await emit(AgentThinking(thought=object()))  # type: ignore[arg-type]
        if self.behaviour == "bad_result":
            return {"x": {1, 2}}
        if self.behaviour == "swallow_cancel":
            try:
                await trio.sleep(100)
            except trio.Cancelled:
                return {"pretended": "done"}
        return {"ok": True}


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        ("raise", "agent_failed"),
        ("hang", "run_timeout"),
        ("bad_event", "invalid_event"),
        ("not_json", "invalid_event"),
        ("bad_result", "invalid_result"),
    ],
)
@pytest.mark.parametrize("timer", [False, True], ids=["trio-deadlines", "server-timer"])
async def test_agent_failures_end_run_not_connection(
    behaviour: str, code: str, timer: bool, autojump_clock: trio.testing.MockClock
) -> None:
    agent = ScriptedAgent(behaviour)
    async with connect(agent=agent, run_timeout_s=60, timer=timer) as conn:
        events = await conn.run_to_end()
        assert events[-1]["type"] == "agent_error"
        assert events[-1]["error"]["code"] == code
        assert "secret internal detail" not in str(events)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # The connection lives on.
        assert (await conn.run_to_end())[-1]["type"] == "agent_error"


async def test_agent_that_swallows_cancel_still_ends_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connect(agent=ScriptedAgent("swallow_cancel")) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        started = await conn.expect("agent_started")
        await conn.client.send_json({"type": "cancel", "run_id": started["run_id"]})
        assert (await conn.expect("run_cancelled"))["seq"] == 2


async def test_drain_lets_runs_finish_then_closes_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connect(agent_delay_ms=1000) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        await conn.expect("agent_started")
        conn.lifecycle.begin_drain(grace_s=10)
        await conn.client.send_json({"type": "user_message", "text": "late"})
        assert (await conn.expect("error"))["code"] == "shutting_down"
        kinds = [(await conn.client.receive_json())["type"] for _ in range(4)]
        assert kinds[-1] == "agent_completed"
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1001, "server_shutdown")


async def test_drain_cancels_runs_past_grace(autojump_clock: trio.testing.MockClock) -> None:
    async with connect(agent_delay_ms=60_000) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        await conn.expect("agent_started")
        start = trio.current_time()
        conn.lifecycle.begin_drain(grace_s=10)
        cancelled = await conn.expect("run_cancelled")
        assert cancelled["reason"] == "server_shutdown"
        assert trio.current_time() - start == pytest.approx(10)
        closed = await conn.closed()
        assert closed.code == 1001


async def test_peer_disconnect_ends_session_and_runs_without_a_resume_grace() -> None:
    async with connect(agent_delay_ms=60_000, resume_grace_s=0) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        await conn.expect("agent_started")
        await conn.client.disconnect()
        with trio.fail_after(5):
            await conn.ended.wait()


class FailingTransport(Wrapped):
    """A real memory transport whose send has a bug for frames containing ``marker``."""

    def __init__(self, inner: MemoryTransport, marker: str) -> None:
        super().__init__(inner)
        self._marker = marker

    def queue(self, frames: Sequence[bytes]) -> None:
        if any(self._marker.encode() in frame for frame in frames):
            raise RuntimeError("bug in the transport")
        super().queue(frames)


async def test_internal_error_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    async with connect(wrap=lambda t: FailingTransport(t, "pong")) as conn:
        await conn.client.send_json({"type": "ping"})
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1011, "internal_error")
    assert "internal error on connection conn_test" in caplog.text


def count_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo, seen = [root], 0
    while todo:
        task = todo.pop()
        seen += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return seen


async def test_nothing_survives_the_session(autojump_clock: trio.testing.MockClock) -> None:
    baseline = count_tasks()
    async with connect(agent_delay_ms=1000, idle_timeout_s=5) as conn:
        for _ in range(3):
            await conn.client.send_json({"type": "user_message", "text": "x"})
        await trio.testing.wait_all_tasks_blocked()
        # The connection's own task (reading), its clock, and one task per run.
        assert count_tasks() == baseline + 2 + 3
        await conn.closed()
        await conn.ended.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == baseline


@attrs.frozen
class FanOutAgent:
    """Emits from several tasks at once, more events than the outbound queue holds."""

    tasks: int = 4
    each: int = 20
    name: str = "fan_out"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        async def burst(n: int) -> None:
            for i in range(self.each):
                await emit(AgentThinking(thought=f"{n}.{i}"))

        async with trio.open_nursery() as nursery:
            for n in range(self.tasks):
                nursery.start_soon(burst, n)
        return {"ok": True}


async def test_concurrent_emits_keep_seq_and_each_task_order() -> None:
    # A small queue and a slow reader mix the queue-at-once path with the blocking one.
    async with connect(agent=FanOutAgent()) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "agent_completed":
            events.append(await conn.client.receive_json())
            await trio.lowlevel.checkpoint()
    assert [e["seq"] for e in events] == list(range(1, 2 + 4 * 20 + 1))
    for n in range(4):
        mine = [e["thought"] for e in events if e.get("thought", "").startswith(f"{n}.")]
        assert mine == [f"{n}.{i}" for i in range(20)]


@pytest.mark.parametrize("writes", [False, True], ids=["at-once", "pass-writes"])
async def test_a_run_writes_what_it_queued_before_its_agent_waits(
    writes: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async with connect(agent_delay_ms=1000, writes=writes) as conn:
        start = trio.current_time()
        await conn.client.send_json({"type": "user_message", "text": "x"})
        await conn.expect("agent_started")  # queued by the run, written as its agent waits
        assert trio.current_time() - start < 1
        await conn.expect("agent_thinking")
        assert trio.current_time() - start == pytest.approx(1)
        await conn.expect("tool_executing")
        assert trio.current_time() - start == pytest.approx(2)


class WriteCounter(Wrapped):
    """A memory transport that writes without a task, as the lean one does, and notes
    how many frames each write took."""

    immediate_writes = True

    def __init__(self, inner: MemoryTransport, writes: list[int]) -> None:
        super().__init__(inner)
        self.immediate_writes = True
        self.writes = writes

    def write_now(self) -> bool:
        inner = self._inner
        queue = inner._queue
        if queue:
            self.writes.append(len(queue))
            while queue:  # the client's buffer is unbounded: never blocks
                inner._outbound.send_nowait(queue.popleft().decode())
                inner._written += 1  # as the queue's own writer counts
        return True


@pytest.mark.parametrize(
    ("writes", "expected"), [(False, [1] * 5), (True, [5])], ids=["at-once", "pass-writes"]
)
async def test_the_frames_of_a_runs_step_leave_in_one_write_after_it(
    writes: bool, expected: list[int]
) -> None:
    counted: list[int] = []
    wrap = lambda t: WriteCounter(t, counted)  # noqa: E731
    async with connect(wrap=wrap, writes=writes) as conn:
        counted.clear()
        events = await conn.run_to_end()  # an agent that never waits: one step
        assert events[-1]["type"] == "agent_completed"
        # agent_started, three events and agent_completed: together at the next pass,
        # or each at once without PassWrites.
        assert counted == expected


class FailingWrites(WriteCounter):
    """A write path with a bug, once ``failing`` is set."""

    failing = False

    def write_now(self) -> bool:
        if self.failing:
            raise RuntimeError("a bug in the write path")
        return super().write_now()


async def test_a_bug_in_a_pass_write_ends_its_connection_not_the_server() -> None:
    lifecycle = ServerLifecycle(max_connections=10)
    wrapped: list[FailingWrites] = []

    def wrap(inner: MemoryTransport) -> FailingWrites:
        wrapped.append(FailingWrites(inner, []))
        return wrapped[0]

    async with connect(wrap=wrap, writes=True, lifecycle=lifecycle) as conn:
        wrapped[0].failing = True
        await conn.client.send_json({"type": "user_message", "text": "x"})
        closed = await conn.closed()
        assert (closed.code, closed.reason) == (1011, "internal_error")
        made: list[int] = []
        assert lifecycle.writes.later(lambda: made.append(1))  # still running
        await trio.testing.wait_all_tasks_blocked()
        assert made == [1]


@attrs.frozen
class CatchingAgent:
    """Catches the first cancellation and goes on: what it yields and gets passes through."""

    name: str = "catching"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            await emit(AgentThinking(thought="cleaning up"))
            raise
        return None


async def test_a_cancelled_agent_sees_the_cancellation_and_may_emit_on_its_way_out() -> None:
    async with connect(agent=CatchingAgent()) as conn:
        await conn.client.send_json({"type": "user_message", "text": "x"})
        started = await conn.expect("agent_started")
        await conn.client.send_json({"type": "cancel", "run_id": started["run_id"]})
        cancelled = await conn.expect("run_cancelled")
        assert cancelled["seq"] == 2  # the emit after the cancel was refused at its checkpoint


@attrs.frozen
class ByTextAgent:
    """Hangs on ``hang``, answers anything else at once."""

    name: str = "by_text"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        if run.text == "hang":
            await trio.sleep_forever()
        return {"text": run.text}


async def test_a_connections_runs_one_after_another_share_one_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spawned: list[str] = []

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task.name)

    baseline = count_tasks()
    async with connect(agent_delay_ms=10) as conn:
        trio.lowlevel.add_instrument(Spawns())
        for _ in range(5):
            assert (await conn.run_to_end())[-1]["type"] == "agent_completed"
        await trio.testing.wait_all_tasks_blocked()
        # The reader, the clock, and the run task waiting for the next run.
        assert count_tasks() == baseline + 3
    assert [name for name in spawned if name.endswith("._runs")] == [
        "app.session._session._Session._runs"
    ]


@pytest.mark.parametrize("timer", [False, True], ids=["trio-deadlines", "server-timer"])
async def test_runs_after_a_timeout_and_a_cancel_start_on_a_fresh_task(
    timer: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async with connect(agent=ByTextAgent(), run_timeout_s=60, timer=timer) as conn:
        assert (await conn.run_to_end("one"))[-1]["result"] == {"text": "one"}
        start = trio.current_time()
        timed_out = (await conn.run_to_end("hang"))[-1]
        assert (timed_out["type"], timed_out["error"]["code"]) == ("agent_error", "run_timeout")
        assert trio.current_time() - start == pytest.approx(60, abs=0.1)
        assert (await conn.run_to_end("two"))[-1]["result"] == {"text": "two"}
        await conn.client.send_json({"type": "user_message", "text": "hang"})
        started = await conn.expect("agent_started")
        await conn.client.send_json({"type": "cancel", "run_id": started["run_id"]})
        assert (await conn.expect("run_cancelled"))["reason"] == "cancelled_by_client"
        # The timeout still counts from each run's start, on the task that serves it.
        start = trio.current_time()
        assert (await conn.run_to_end("three"))[-1]["result"] == {"text": "three"}
        timed_out = (await conn.run_to_end("hang"))[-1]
        assert timed_out["error"]["code"] == "run_timeout"
        assert trio.current_time() - start == pytest.approx(60, abs=0.1)


async def test_a_quiet_connection_keeps_no_task_for_its_next_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    baseline = count_tasks()
    async with connect(ping_interval_s=10, pong_timeout_s=5) as conn:
        await conn.run_to_end()
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == baseline + 3
        await trio.sleep(25)  # a ping with the connection quiet for a whole interval
        assert count_tasks() == baseline + 2
        assert (await conn.run_to_end())[-1]["type"] == "agent_completed"


async def test_a_stop_waits_for_the_agent_whose_start_arms_the_deadline() -> None:
    runner = _Runner(Timer())  # a timer that does not run: the deadline is the scope's
    with runner.scope:
        deadline = trio.current_time() + 5
        runner.begin(deadline)
        assert runner.scope.deadline == math.inf  # not before the agent starts
        runner.agent_starts()
        assert runner.scope.deadline == deadline
        runner.end()
        assert runner.scope.deadline == math.inf
        runner.cancel()  # after the agent: too late, and nothing kept for the next run
        runner.begin(deadline)
        assert not runner.stopped
        assert not runner.scope.cancel_called
        runner.cancel()  # before the agent starts: kept for it
        assert runner.stopped
        assert not runner.scope.cancel_called
        assert not runner.cancelled
        runner.agent_starts()
        assert runner.scope.cancel_called
        assert runner.cancelled  # what the run's emit checks
    running = _Runner(Timer())
    with running.scope:
        running.begin(deadline)
        running.agent_starts()
        assert not running.cancelled
        running.cancel()  # while the agent runs: at once
        assert running.scope.cancel_called
        assert running.cancelled


async def test_a_run_deadline_is_armed_on_a_running_timer_when_its_agent_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        runner = _Runner(timer)
        with runner.scope:
            start = trio.current_time()
            runner.begin(start + 5)
            runner.agent_starts()
            assert runner.timeout.armed
            assert runner.scope.deadline == math.inf  # not the scope's: the timer's
            await trio.sleep(4)
            runner.end()  # disarmed: its time passes without a cancel
            assert not runner.timeout.armed
            await trio.sleep(2)
            assert not runner.scope.cancel_called
            runner.begin(trio.current_time() + 5)  # the next run on the same task
            runner.agent_starts()
            await trio.sleep_forever()  # cancelled by the timer, 5 s after the run began
        assert runner.scope.cancelled_caught
        assert trio.current_time() - start == pytest.approx(11)
        runner.release()  # its task ends: the timer holds nothing of it
        assert not any(timer._armed.values())
        nursery.cancel_scope.cancel()


async def test_runs_at_once_each_get_a_task_and_one_waits_for_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    baseline = count_tasks()
    async with connect(agent=ByTextAgent(), max_runs=3) as conn:
        for _ in range(3):
            await conn.client.send_json({"type": "user_message", "text": "hang"})
        run_ids = [(await conn.expect("agent_started"))["run_id"] for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == baseline + 2 + 3
        for run_id in run_ids:
            await conn.client.send_json({"type": "cancel", "run_id": run_id})
            assert (await conn.expect("run_cancelled"))["run_id"] == run_id
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == baseline + 2  # a cancelled run spends its task's scope
        assert (await conn.run_to_end("one"))[-1]["result"] == {"text": "one"}
        await conn.client.send_json({"type": "user_message", "text": "hang"})
        assert (await conn.run_to_end("two"))[-1]["result"] == {"text": "two"}
        await trio.testing.wait_all_tasks_blocked()
        # The hanging run's task and the one waiting for the next run.
        assert count_tasks() == baseline + 2 + 2


async def test_a_run_task_that_ends_leaves_nothing_in_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lifecycle = ServerLifecycle(max_connections=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifecycle.timer.run)
        async with connect(lifecycle=lifecycle, agent_delay_ms=10) as conn:
            assert (await conn.run_to_end())[-1]["type"] == "agent_completed"
            # Disarmed, and kept for the task's next run.
            [deadline] = [d for slot in lifecycle.timer._armed.values() for d in slot]
            assert not deadline.armed
        await trio.testing.wait_all_tasks_blocked()
        # The connection ended, and its run task: the timer holds nothing of it.
        assert not any(lifecycle.timer._armed.values())
        nursery.cancel_scope.cancel()
