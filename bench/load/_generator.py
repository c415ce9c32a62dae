"""The load generator: simulated users, each on its own WebSocket connection and token.

The client is hand-rolled for speed (:mod:`bench.harness._client`): one asyncio protocol
object per user, websockets' sans-I/O ``ClientProtocol`` for the handshake and what
the client sends, callbacks only -- no task, queue or future per frame. A user's turn is: send a
``user_message``, receive its five run events through ``agent_completed``, think,
repeat. Every frame is logged per user and judged by the user's isolation ledger after
the window (see :mod:`bench.harness._isolation`).

Phases, each awaited by the caller (in-process, or :func:`run_job` in a child process,
the ``load`` role of :mod:`bench.harness._child`):
:meth:`LoadGenerator.connect_all` (the ramp), :meth:`LoadGenerator.run_window`
(turns for a fixed time, then a bounded drain) or :meth:`LoadGenerator.hold` (idle
connections with keepalive), :meth:`LoadGenerator.close_all`, then
:meth:`LoadGenerator.result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import resource
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
from websockets.uri import WebSocketURI, parse_uri

from app.auth._tokens import mint_token

from ..harness import Commands, FastClient, IsolationCheck, UserCheck, emit
from ._results import LoadResult

__all__ = ["LoadConfig", "LoadGenerator", "SimUser", "run_job", "run_load"]

TOKEN_TTL_S = 3 * 3600.0
#: How often a load-generator process reports its turns and frames.
PROGRESS_EVERY_S = 0.5
TERMINAL_TYPES = frozenset({"agent_completed", "agent_error", "run_cancelled"})


@attrs.frozen
class LoadConfig:
    """What one load generator does.

    ``first_user``/``users``: this generator's share of the ``total_users`` users
    (the isolation index covers them all). ``think_s``: mean think time between turns
    (uniform over 0.5-1.5 x the mean). ``max_turns``: stop a user after that many
    turns (None: until the window ends).
    """

    host: str
    port: int
    secret: str
    users: int
    path: str = "/ws"
    first_user: int = 0
    total_users: int | None = None
    think_s: float = 0.1
    duration_s: float = 10.0
    warmup_s: float = 0.0
    max_turns: int | None = None
    connect_concurrency: int = 64
    connect_timeout_s: float = 15.0
    ramp_timeout_s: float = 120.0
    drain_timeout_s: float = 15.0
    close_timeout_s: float = 5.0
    seed: str = "bench"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadConfig:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class HandshakeRejected(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ClosedBeforeReady(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"closed {code} before connection_ready")
        self.code = code


class SimUser(FastClient):
    """One simulated user: its connection, its turn loop and its isolation log."""

    __slots__ = (
        "check",
        "closing",
        "established",
        "gen",
        "index",
        "lost",
        "nonce",
        "pending",
        "ready",
        "sent_at",
        "text_prefix",
        "think_handle",
        "thread_id",
        "token",
        "turn_no",
        "user_id",
    )

    def __init__(self, gen: LoadGenerator, index: int, token: str, check: UserCheck) -> None:
        super().__init__()
        self.gen = gen
        self.index = index
        self.user_id = check.user
        self.token = token
        self.check = check
        self.thread_id = check.thread_id
        self.text_prefix = f"bench {check.canary} turn"
        self.ready: asyncio.Future[None] | None = None
        self.sent_at = 0.0
        self.pending: str | None = None
        self.turn_no = 0
        # client_ids are idempotency keys per thread: unique across this user's connections.
        self.nonce = secrets.token_hex(4)
        self.think_handle: asyncio.TimerHandle | None = None
        self.closing = False
        self.lost = False
        self.established = False  # connection_ready received

    # -- connection events ------------------------------------------------------------

    def handshake(self) -> tuple[WebSocketURI, str]:
        return self.gen.uri, self.token

    def on_rejected(self, status: int) -> None:
        self._fail_ready(HandshakeRejected(status))

    def on_protocol_error(self, what: str) -> None:
        self.gen.errors[f"protocol:{what}"] += 1

    def on_closed(self, code: int) -> None:
        if self.think_handle is not None:
            self.think_handle.cancel()
            self.think_handle = None
        self._fail_ready(ClosedBeforeReady(code))
        self.gen.on_lost(self, code)

    def _fail_ready(self, exc: Exception) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc)

    def on_text(self, text: str) -> None:
        gen = self.gen
        if gen.counting:
            gen.frames_rx += 1
        self.check.frame(text)
        try:
            frame = json.loads(text)
            kind = frame["type"]
        except (ValueError, TypeError, KeyError):
            gen.errors["bad_frame"] += 1
            return
        if kind in TERMINAL_TYPES:
            if self.pending is not None:
                self._turn_done(None if kind == "agent_completed" else str(kind))
        elif kind == "connection_ready":
            self.established = True
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
        elif kind == "error":
            name = f"error:{frame.get('code')}"
            if self.pending is not None and frame.get("ref") == self.pending:
                self._turn_done(name)
            else:
                gen.errors[name] += 1

    # -- turns ------------------------------------------------------------------------

    def send_turn(self) -> None:
        self.think_handle = None
        if self.closing or not self.is_open:
            self.gen.user_idle(self)
            return
        self.turn_no += 1
        client_id = f"c{self.turn_no}.{self.nonce}"
        text = f"{self.text_prefix} {self.turn_no} please count these words"
        self.check.sent(client_id, text)
        payload = json.dumps(
            {
                "type": "user_message",
                "text": text,
                "thread_id": self.thread_id,
                "client_id": client_id,
            },
            separators=(",", ":"),
        )
        self.pending = client_id
        self.sent_at = time.perf_counter()
        self.send_text(payload.encode())
        if self.gen.counting:
            self.gen.frames_tx += 1

    def _turn_done(self, error: str | None) -> None:
        gen = self.gen
        gen.record_turn(self.sent_at, time.perf_counter(), error)
        self.pending = None
        limit = gen.config.max_turns
        if not gen.running or (limit is not None and self.turn_no >= limit):
            gen.user_idle(self)
            return
        delay = gen.think_delay()
        if delay > 0:
            self.think_handle = gen.loop.call_later(delay, self.send_turn)
        else:
            self.send_turn()

    def stop_thinking(self) -> bool:
        """Cancel a scheduled turn; True if there was one."""
        if self.think_handle is None:
            return False
        self.think_handle.cancel()
        self.think_handle = None
        return True

    def shut(self) -> None:
        self.closing = True
        self.close(1000)


class LoadGenerator:
    """Simulated users against one server, in one process (see the module docstring)."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.uri = parse_uri(f"ws://{config.host}:{config.port}{config.path}")
        self.rng = random.Random(f"{config.seed}:{config.first_user}")
        total = config.total_users if config.total_users is not None else config.users
        self.isolation = IsolationCheck(config.seed, total)
        secret = config.secret.encode()
        now = time.time()
        self.users: list[SimUser] = []
        for index in range(config.first_user, config.first_user + config.users):
            check = self.isolation.user(index)
            token = mint_token(
                secret=secret, algorithm="HS256", subject=check.user, ttl_s=TOKEN_TTL_S, now=now
            )
            self.users.append(SimUser(self, index, token, check))
        self.errors: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.connect_ms: list[float] = []
        self.turn_ms: list[float] = []
        self.turns = 0
        self.frames_rx = 0
        self.frames_tx = 0
        self.counting = False
        self.running = False
        self.window_start = float("inf")  # no latency is recorded before the window
        self.window_end = 0.0
        self.window_s = 0.0
        self.cpu_s = 0.0
        self.connected: list[SimUser] = []
        self._busy: set[SimUser] = set()
        self._idle_event = asyncio.Event()
        self._open: set[SimUser] = set()
        self._all_closed = asyncio.Event()

    # -- events from users -------------------------------------------------------------

    def on_lost(self, user: SimUser, code: int) -> None:
        self._open.discard(user)
        if not self._open:
            self._all_closed.set()
        if user.lost:
            return
        user.lost = True
        was_busy = user.pending is not None
        if user.established and not user.closing:
            self.errors["dropped"] += 1
            self.close_codes[str(code)] += 1
            if was_busy:
                self.errors["turn_lost"] += 1
        user.check.end(lost=was_busy or not user.closing)
        self.user_idle(user)

    def record_turn(self, sent_at: float, done_at: float, error: str | None) -> None:
        if error is not None:
            self.errors[error] += 1
            return
        if sent_at >= self.window_start:
            self.turn_ms.append((done_at - sent_at) * 1000.0)
        if self.counting:
            self.turns += 1

    def user_idle(self, user: SimUser) -> None:
        self._busy.discard(user)
        if not self._busy:
            self._idle_event.set()

    def think_delay(self) -> float:
        think = self.config.think_s
        return think * (0.5 + self.rng.random()) if think > 0 else 0.0

    # -- phases -----------------------------------------------------------------------

    async def _connect_one(self, user: SimUser) -> None:
        cfg = self.config
        user.check.begin()
        user.ready = self.loop.create_future()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                await self.loop.create_connection(lambda: user, cfg.host, cfg.port)
                self._open.add(user)
                await user.ready
        except TimeoutError:
            self.errors["connect_timeout"] += 1
            user.abort()
        except HandshakeRejected as exc:
            self.errors[f"http_{exc.status}"] += 1
        except ClosedBeforeReady as exc:
            self.errors["closed_before_ready"] += 1
            self.close_codes[str(exc.code)] += 1
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.errors[f"connect:{name}"] += 1
        else:
            self.connect_ms.append((time.perf_counter() - started) * 1000.0)
            self.connected.append(user)

    async def connect_all(self) -> int:
        """Connect every user, at most ``connect_concurrency`` handshakes at a time.

        Returns how many received ``connection_ready``. Bounded by ``ramp_timeout_s``;
        cancellation aborts the connections in progress.
        """
        pending: Iterator[SimUser] = iter(self.users)

        async def worker() -> None:
            for user in pending:
                await self._connect_one(user)

        workers = max(1, min(self.config.connect_concurrency, len(self.users)))
        try:
            async with asyncio.timeout(self.config.ramp_timeout_s):
                await asyncio.gather(*(worker() for _ in range(workers)))
        except TimeoutError:
            self.errors["ramp_timeout"] += 1
        return len(self.connected)

    def _start_window(self, duration_s: float) -> None:
        self.cpu_s = -_cpu_seconds()
        self.window_start = time.perf_counter()
        self.window_end = self.window_start + duration_s
        self.counting = True

    def _end_window(self) -> None:
        self.counting = False
        self.running = False
        self.window_s = time.perf_counter() - self.window_start
        self.cpu_s += _cpu_seconds()

    async def run_window(self) -> None:
        """Run turns: ``warmup_s`` unmeasured, then ``duration_s`` measured, then wait (at
        most ``drain_timeout_s``) for the turns in flight. Stops early when every user
        has done ``max_turns``."""
        cfg = self.config
        users = [u for u in self.connected if not u.lost]
        self._busy = set(users)
        self._idle_event.clear()
        self.running = True
        for user in users:
            # Stagger the first turns over one think time so users do not march in step.
            delay = self.rng.random() * cfg.think_s
            user.think_handle = self.loop.call_later(delay, user.send_turn)
        if not users:
            self._idle_event.set()
        if cfg.warmup_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.warmup_s):
                    await self._idle_event.wait()
        self._start_window(cfg.duration_s)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.duration_s):
                await self._idle_event.wait()
        self._end_window()
        # A turn sent before the window and unanswered all through it: the server left
        # that user waiting. Counted, or a server that serves only some of its users
        # would look fast (its latencies come from the others).
        stalled = sum(1 for u in users if u.pending is not None and u.sent_at < self.window_start)
        if stalled:
            self.errors["stalled_turn"] += stalled
        for user in users:
            if user.stop_thinking():
                self.user_idle(user)
        if self._busy:
            try:
                async with asyncio.timeout(cfg.drain_timeout_s):
                    await self._idle_event.wait()
            except TimeoutError:
                self.errors["turn_timeout"] += sum(1 for u in self._busy if u.pending)

    async def hold(self, duration_s: float) -> None:
        """Keep the connections open and idle for ``duration_s`` (pongs answer pings)."""
        self._start_window(duration_s)
        await asyncio.sleep(duration_s)
        self._end_window()

    async def close_all(self) -> None:
        """Close every connection (1000), waiting at most ``close_timeout_s``, then abort."""
        for user in self.users:
            user.closing = True
            user.stop_thinking()
        if self._open:
            self._all_closed.clear()
            for user in list(self._open):
                user.shut()
            try:
                async with asyncio.timeout(self.config.close_timeout_s):
                    await self._all_closed.wait()
            except TimeoutError:
                self.errors["close_timeout"] += len(self._open)
                for user in list(self._open):
                    user.abort()
                await asyncio.sleep(0)

    def result(self) -> LoadResult:
        self.isolation.finish()
        return LoadResult(
            users=len(self.users),
            connected=len(self.connected),
            connect_ms=tuple(self.connect_ms),
            turn_ms=tuple(self.turn_ms),
            turns=self.turns,
            window_s=self.window_s,
            frames_rx=self.frames_rx,
            frames_tx=self.frames_tx,
            cpu_s=self.cpu_s,
            errors=self.errors,
            close_codes=self.close_codes,
            violations=self.isolation.violation_count,
            violation_samples=self.isolation.samples(),
            anomalies=self.isolation.anomalies(),
        )

    def progress(self) -> dict[str, int]:
        return {"turns": self.turns, "frames": self.frames_rx + self.frames_tx}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(config: LoadConfig, *, hold: bool = False) -> LoadResult:
    """All phases in one go (tests, and the simplest use)."""
    gen = LoadGenerator(config)
    try:
        await gen.connect_all()
        if hold:
            await gen.hold(config.duration_s)
        else:
            await gen.run_window()
    finally:
        await gen.close_all()
    return gen.result()


async def _report_progress(gen: LoadGenerator) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        emit("progress", pid=os.getpid(), **gen.progress())


async def run_job(job: dict[str, Any], commands: Commands) -> None:
    """The ``load`` role of :mod:`bench.harness._child`: one share of the users.

    Connects them (``connected``), waits for ``go``, runs the window -- turns, or
    idle connections when the job's ``mode`` is ``hold`` -- with a ``progress`` line
    every :data:`PROGRESS_EVERY_S` (``window_done`` at its end), closes, and writes
    ``result``. Any other command (``stop``, end of stdin) skips the window.
    """
    config = LoadConfig.from_dict(job["config"])
    gen = LoadGenerator(config)
    try:
        await gen.connect_all()
        emit("connected", connected=len(gen.connected), errors=dict(gen.errors))
        if await commands.next() == "go":
            reporter = asyncio.create_task(_report_progress(gen))
            try:
                if job.get("mode") == "hold":
                    await gen.hold(config.duration_s)
                else:
                    await gen.run_window()
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            emit("window_done", **gen.progress())
    finally:
        await gen.close_all()
    emit("result", result=gen.result().as_dict())
