"""Users with one thread each, in one asyncio process: the clients of ``bench resume``
and ``bench instructions``.

:func:`measure_resume` awaits its phases in turn: every user connects and runs ``turns``
turns in its thread (noting the last ``thread_seq``); all drop their connections at once
(an abrupt close, no closing handshake); all reconnect; then every user sends ``resume``
after ``last_seq - replay`` in the same instant, and the time from its ``resume`` to its
``resumed`` is its resume latency. :func:`run_turns` is the first phase alone, then the
drop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import attrs
from websockets.uri import WebSocketURI, parse_uri

from app.auth._tokens import mint_token

from ..harness import FastClient

__all__ = ["ResumeResult", "TurnsResult", "UsersConfig", "measure_resume", "run_turns"]

TOKEN_TTL_S = 3600.0
TERMINAL_TYPES = frozenset({"agent_completed", "agent_error", "run_cancelled"})
RESUMED = frozenset({"resumed"})


@attrs.frozen
class UsersConfig:
    host: str
    port: int
    secret: str
    users: int
    turns: int = 3
    #: Events each resume replays (``after`` = the user's last ``thread_seq`` - this).
    replay: int = 6
    connect_concurrency: int = 64
    #: Bound on each phase (connect, turns, reconnect, resume), seconds.
    phase_timeout_s: float = 120.0


@attrs.frozen
class TurnsResult:
    users: int
    connected: int
    #: Turns that ended in ``agent_completed``.
    completed: int
    errors: dict[str, int]


@attrs.frozen
class ResumeResult:
    users: int
    connected: int
    reconnected: int
    resumed: int
    latency_ms: tuple[float, ...]
    replayed: int
    turns_s: float
    errors: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["latency_ms"] = list(self.latency_ms)
        return out


class _Conn(FastClient):
    """One connection of a :class:`_User`; its frames go to the user."""

    __slots__ = ("ready", "user")

    def __init__(self, user: _User) -> None:
        super().__init__()
        self.user = user
        self.ready: asyncio.Future[None] = user.bench.loop.create_future()

    def handshake(self) -> tuple[WebSocketURI, str]:
        return self.user.bench.uri, self.user.token

    def on_text(self, text: str) -> None:
        self.user.on_frame(self, json.loads(text))

    def on_rejected(self, status: int) -> None:
        self._fail(f"http_{status}")

    def on_closed(self, code: int) -> None:
        self._fail(f"closed_{code}")
        self.user.on_closed(self)

    def on_protocol_error(self, what: str) -> None:
        self.user.bench.errors[f"protocol:{what}"] += 1

    def _fail(self, what: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(what))


class _User:
    __slots__ = (
        "bench",
        "completed",
        "conn",
        "index",
        "last_seq",
        "replayed",
        "thread_id",
        "token",
        "until",
        "waiter",
    )

    def __init__(self, bench: _Bench, index: int, token: str) -> None:
        self.bench = bench
        self.index = index
        self.token = token
        self.thread_id = f"thr-resume-{index}"
        self.conn: _Conn | None = None
        self.last_seq = 0
        self.replayed = 0
        self.completed = 0
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.until: frozenset[str] = frozenset()  # the frame types that answer the waiter

    def on_frame(self, conn: _Conn, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "connection_ready":
            if not conn.ready.done():
                conn.ready.set_result(None)
            return
        if "thread_seq" in frame:
            self.last_seq = max(self.last_seq, int(frame["thread_seq"]))
            self.replayed += 1
        done = kind in self.until or kind == "error"
        if kind == "error":
            self.bench.errors[f"error:{frame.get('code')}"] += 1
        if done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(frame)

    def on_closed(self, conn: _Conn) -> None:
        if self.waiter is not None and not self.waiter.done() and conn is self.conn:
            self.waiter.set_exception(ConnectionError("closed"))

    async def connect(self) -> bool:
        bench = self.bench
        conn = _Conn(self)
        try:
            await bench.loop.create_connection(lambda: conn, bench.config.host, bench.config.port)
            await conn.ready
        except (OSError, ConnectionError) as exc:
            bench.errors[f"connect:{exc}"] += 1
            conn.abort()
            return False
        self.conn = conn
        return True

    async def ask(self, message: dict[str, Any], until: frozenset[str]) -> dict[str, Any]:
        """Send ``message``; the first frame of a type in ``until`` (or an ``error``)."""
        assert self.conn is not None
        self.waiter = self.bench.loop.create_future()
        self.until = until
        self.conn.send_text(json.dumps(message, separators=(",", ":")).encode())
        return await self.waiter

    async def turns(self, count: int) -> None:
        for k in range(count):
            frame = await self.ask(
                {
                    "type": "user_message",
                    "text": f"turn {k} of user {self.index}, count these words",
                    "thread_id": self.thread_id,
                    "client_id": f"c{k}",
                },
                TERMINAL_TYPES,
            )
            if frame["type"] == "agent_completed":
                self.completed += 1
            else:
                self.bench.errors[f"turn:{frame['type']}"] += 1

    async def resume(self, after: int) -> float | None:
        """Resume after ``after``; the latency in ms, or None (counted as an error)."""
        self.replayed = 0
        started = time.perf_counter()
        request = {"type": "resume", "thread_id": self.thread_id, "after": after}
        frame = await self.ask(request, RESUMED)
        latency = (time.perf_counter() - started) * 1000.0
        if frame.get("type") != "resumed" or frame.get("recovered") is not True:
            self.bench.errors[f"resume:{frame.get('type')}:{frame.get('reason')}"] += 1
            return None
        if self.replayed != frame["last_seq"] - after:
            self.bench.errors["resume:replay_count"] += 1
        return latency


@attrs.define
class _Bench:
    config: UsersConfig
    loop: asyncio.AbstractEventLoop
    uri: WebSocketURI
    errors: Counter[str] = attrs.field(factory=Counter)


async def _bounded(config: UsersConfig, coros: list[Any], limit: int | None = None) -> list[Any]:
    """Run ``coros`` (at most ``limit`` at a time) within the phase timeout."""
    semaphore = asyncio.Semaphore(limit or len(coros) or 1)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    async with asyncio.timeout(config.phase_timeout_s):
        return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def _users(config: UsersConfig) -> tuple[_Bench, list[_User]]:
    bench = _Bench(
        config, asyncio.get_running_loop(), parse_uri(f"ws://{config.host}:{config.port}/ws")
    )
    now = time.time()
    secret = config.secret.encode()
    users = [
        _User(
            bench,
            i,
            mint_token(
                secret=secret,
                algorithm="HS256",
                subject=f"resume-{i:05d}",
                ttl_s=TOKEN_TTL_S,
                now=now,
            ),
        )
        for i in range(config.users)
    ]
    return bench, users


async def run_turns(config: UsersConfig) -> TurnsResult:
    """Every user connects, runs ``config.turns`` turns in its thread (0: none), then all
    drop their connections (no closing handshake)."""
    bench, users = _users(config)
    try:
        up = await _bounded(config, [u.connect() for u in users], config.connect_concurrency)
        live = [u for u, ok in zip(users, up, strict=True) if ok is True]
        outcomes = await _bounded(config, [u.turns(config.turns) for u in live])
        bench.errors.update(f"turns:{type(o).__name__}" for o in outcomes if o is not None)
    finally:
        for user in users:
            if user.conn is not None:
                user.conn.abort()
    return TurnsResult(
        users=config.users,
        connected=len(live),
        completed=sum(u.completed for u in live),
        errors=dict(bench.errors),
    )


async def measure_resume(config: UsersConfig) -> ResumeResult:
    """Every phase (see the module docstring) against a running server."""
    bench, users = _users(config)
    try:
        up = await _bounded(config, [u.connect() for u in users], config.connect_concurrency)
        live = [u for u, ok in zip(users, up, strict=True) if ok is True]
        began = time.perf_counter()
        outcomes = await _bounded(config, [u.turns(config.turns) for u in live])
        turns_s = time.perf_counter() - began
        bench.errors.update(f"turns:{type(o).__name__}" for o in outcomes if o is not None)
        # Everyone drops at once, without a closing handshake, and comes back.
        for user in live:
            if user.conn is not None:
                user.conn.abort()
                user.conn = None
        await asyncio.sleep(0.2)
        back = await _bounded(config, [u.connect() for u in live], config.connect_concurrency)
        again = [u for u, ok in zip(live, back, strict=True) if ok is True]
        # Every resume in the same instant: the server meets them as one burst.
        afters = [max(0, u.last_seq - config.replay) for u in again]
        resumes = [u.resume(after) for u, after in zip(again, afters, strict=True)]
        latencies = await _bounded(config, resumes)
    finally:
        for user in users:
            if user.conn is not None:
                user.conn.abort()
    measured = tuple(x for x in latencies if isinstance(x, float))
    bench.errors.update(
        f"resume:{type(x).__name__}" for x in latencies if isinstance(x, BaseException)
    )
    return ResumeResult(
        users=config.users,
        connected=len(live),
        reconnected=len(again),
        resumed=len(measured),
        latency_ms=measured,
        replayed=sum(u.replayed for u in again),
        turns_s=turns_s,
        errors=dict(bench.errors),
    )
