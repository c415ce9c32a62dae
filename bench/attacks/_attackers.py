"""Misbehaving clients for ``bench attacks``, one kind per attack, on asyncio.

Each attack runs from ``start_at`` to ``end_at`` (``time.monotonic``), keeps its
``connections`` busy the whole window (a connection the server closed is replaced)
and counts what the server did to it:

- ``flood``: send ``user_message`` frames as fast as the socket takes them; the
  server answers ``rate_limited`` and closes 1008 ``rate_limited``.
- ``slowloris``: open TCP connections and trickle the opening request a byte at a
  time; the server drops them after ``--open-timeout-s``.
- ``oversized``: one frame over ``max_message_bytes``; the server closes 1009.
- ``slow_reader``: send turns with long texts, never read (small receive buffer);
  the server closes 1008 ``slow_consumer`` after ``--send-timeout-s``.
- ``churn``: connect, wait for ``connection_ready``, close 1000, again, at up to
  ``rate`` cycles per second.

Attackers authenticate with valid tokens of their own users (``atk-*``): an attacker
with a token is the harder case, and what each attack is about is past the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, cast

import attrs
from websockets.uri import WebSocketURI, parse_uri

from app.auth._tokens import mint_token

from ..harness import Commands, FastClient, emit, summarize

__all__ = ["ATTACKS", "AttackConfig", "AttackStats", "attack", "run_job"]

ATTACKS = ("flood", "slowloris", "oversized", "slow_reader", "churn")


@attrs.frozen
class AttackConfig:
    host: str
    port: int
    secret: str
    kind: str
    start_at: float
    end_at: float
    connections: int = 8
    path: str = "/ws"
    rate: float = 300.0  # churn: cycles per second, all connections together
    trickle_s: float = 0.5  # slowloris: seconds between two bytes
    oversize_bytes: int = 65_536 + 1024
    slow_text_chars: int = 30_000  # slow_reader: characters per user_message
    slow_turns_per_s: float = 4.0
    connect_timeout_s: float = 10.0

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class AttackStats:
    """What the server did to the attacker's connections."""

    opened: int = 0  # TCP connections (or handshakes) started
    ready: int = 0  # connection_ready received
    frames_sent: int = 0
    server_closed: int = 0  # the server ended the connection
    close_codes: Counter[str] = attrs.field(factory=Counter)  # of those
    errors: Counter[str] = attrs.field(factory=Counter)  # error events, by code
    failures: Counter[str] = attrs.field(factory=Counter)  # connects that failed
    refused: Counter[str] = attrs.field(factory=Counter)  # handshakes answered, by HTTP status
    ages_s: list[float] = attrs.field(factory=list)  # of connections the server closed
    open_at_end: int = 0
    oldest_at_end_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        ages = summarize(a * 1000 for a in self.ages_s)
        return {
            "opened": self.opened,
            "ready": self.ready,
            "frames_sent": self.frames_sent,
            "server_closed": self.server_closed,
            "close_codes": dict(sorted(self.close_codes.items())),
            "errors": dict(sorted(self.errors.items())),
            "failures": dict(sorted(self.failures.items())),
            "refused": dict(sorted(self.refused.items())),
            "age_s": None
            if ages is None
            else {"p50": round(ages.p50 / 1000, 2), "max": round(ages.max / 1000, 2)},
            "open_at_end": self.open_at_end,
            "oldest_at_end_s": round(self.oldest_at_end_s, 2),
        }


class _Attacker(FastClient):
    """An authenticated connection that counts what it receives."""

    def __init__(self, run: _Run, user: int) -> None:
        super().__init__()
        self.run = run
        self.user = user
        self.born = time.monotonic()
        self.ready: asyncio.Future[None] = run.loop.create_future()
        self.gone: asyncio.Future[None] = run.loop.create_future()
        self.leaving = False  # we closed it, or it never opened
        self.refused = False

    def handshake(self) -> tuple[WebSocketURI, str]:
        return self.run.uri, self.run.token(self.user)

    def on_rejected(self, status: int) -> None:
        # The server shedding an attacker before the upgrade: its answer, not a failure.
        self.run.stats.refused[str(status)] += 1
        self.refused = True
        self.leaving = True

    def on_text(self, text: str) -> None:
        if text.startswith('{"type":"connection_ready"'):
            self.run.stats.ready += 1
            if not self.ready.done():
                self.ready.set_result(None)
        elif text.startswith('{"type":"error"'):
            with contextlib.suppress(ValueError, TypeError):
                self.run.stats.errors[str(json.loads(text).get("code"))] += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.run.live.add(cast("asyncio.Transport", transport))
        super().connection_made(transport)

    def on_closed(self, code: int) -> None:
        if self.transport is not None:
            self.run.live.discard(self.transport)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed {code}"))
        if not self.leaving:
            self.run.server_closed(self.born, code)
        if not self.gone.done():
            self.gone.set_result(None)

    def leave(self) -> None:
        self.leaving = True
        self.close(1000)
        self.run.loop.call_later(2.0, self.abort)


class _Run:
    """One attack: its clock, its tokens, its counters."""

    def __init__(self, config: AttackConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.uri = parse_uri(f"ws://{config.host}:{config.port}{config.path}")
        self.stats = AttackStats()
        self._tokens: dict[int, str] = {}
        self.live: set[asyncio.Transport] = set()  # aborted when the attack ends

    def abort_all(self) -> None:
        for transport in list(self.live):
            transport.abort()
        self.live.clear()

    def token(self, user: int) -> str:
        if user not in self._tokens:
            self._tokens[user] = mint_token(
                secret=self.config.secret.encode(),
                algorithm="HS256",
                subject=f"atk-{self.config.kind}-{user}",
                ttl_s=3600.0,
                now=time.time(),
            )
        return self._tokens[user]

    def left(self) -> float:
        return self.config.end_at - time.monotonic()

    def server_closed(self, born: float, code: int) -> None:
        self.stats.server_closed += 1
        self.stats.close_codes[str(code)] += 1
        self.stats.ages_s.append(time.monotonic() - born)

    async def open(self, user: int, sock: socket.socket | None = None) -> _Attacker | None:
        """An authenticated connection that got ``connection_ready``, or None."""
        conn = _Attacker(self, user)
        self.stats.opened += 1
        cfg = self.config
        try:
            async with asyncio.timeout(min(cfg.connect_timeout_s, max(0.1, self.left()))):
                if sock is None:
                    await self.loop.create_connection(lambda: conn, cfg.host, cfg.port)
                else:
                    await self.loop.create_connection(lambda: conn, sock=sock)
                await conn.ready
        except (TimeoutError, OSError, ConnectionError) as exc:
            if not conn.refused:
                # A handshake cut by the end of the window is not the server's failure.
                what = "cut_at_end" if self.left() <= 0 else type(exc).__name__
                self.stats.failures[what] += 1
            conn.leaving = True
            conn.abort()
            return None
        return conn


async def _until_end(run: _Run, conn: _Attacker) -> bool:
    """Wait until the server drops ``conn`` (True) or the window ends (False)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, run.left())):
            await asyncio.shield(conn.gone)
            return True
    return False


async def _flood(run: _Run, user: int) -> None:
    payload = b'{"type":"user_message","text":"flood","client_id":"f1"}'
    while run.left() > 0:
        conn = await run.open(user)
        if conn is None:
            await asyncio.sleep(0.05)
            continue
        transport = conn.transport
        while conn.is_open and transport is not None and run.left() > 0:
            if transport.get_write_buffer_size() > 256 * 1024:
                await asyncio.sleep(0.001)
                continue
            for _ in range(64):
                if not conn.send_text(payload):
                    break
                run.stats.frames_sent += 1
            await asyncio.sleep(0)
        if conn.is_open:
            conn.leave()
        await _until_end(run, conn)


async def _oversized(run: _Run, user: int) -> None:
    payload = b'{"type":"user_message","text":"' + b"x" * run.config.oversize_bytes + b'"}'
    while run.left() > 0:
        conn = await run.open(user)
        if conn is None:
            await asyncio.sleep(0.05)
            continue
        conn.send_text(payload)
        run.stats.frames_sent += 1
        if not await _until_end(run, conn):
            conn.leave()


async def _slow_reader(run: _Run, user: int) -> None:
    text = "slow " * (run.config.slow_text_chars // 5)
    payload = json.dumps({"type": "user_message", "text": text}).encode()
    while run.left() > 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                run.loop.sock_connect(sock, (run.config.host, run.config.port)), 5.0
            )
        except (TimeoutError, OSError) as exc:
            sock.close()
            run.stats.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        conn = await run.open(user, sock)
        if conn is None:
            await asyncio.sleep(0.05)
            continue
        transport = cast("asyncio.Transport", conn.transport)
        transport.pause_reading()  # and never again: the server's writes back up
        while conn.transport is not None and not conn.gone.done() and run.left() > 0:
            if transport.get_write_buffer_size() < 64 * 1024 and conn.send_text(payload):
                run.stats.frames_sent += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 / run.config.slow_turns_per_s):
                    await asyncio.shield(conn.gone)
        if not conn.gone.done():
            run.stats.open_at_end += 1
            run.stats.oldest_at_end_s = max(run.stats.oldest_at_end_s, time.monotonic() - conn.born)
            conn.leaving = True
            conn.abort()


class _Trickle(asyncio.Protocol):
    """A slowloris: the opening request, one byte every ``trickle_s``, never finished."""

    REQUEST = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"X-Padding: "
        + b"a" * 4096
    )

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.born = time.monotonic()
        self.sent = 0
        self.transport: asyncio.Transport | None = None
        self.gone: asyncio.Future[None] = run.loop.create_future()
        self.leaving = False

    def itself(self) -> _Trickle:
        """The protocol factory of this very connection."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.run.live.add(self.transport)
        self.born = time.monotonic()
        self.drip()

    def drip(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.REQUEST[self.sent % len(self.REQUEST) :][:1])
        self.sent += 1
        self.run.stats.frames_sent += 1
        self.run.loop.call_later(self.run.config.trickle_s, self.drip)

    def data_received(self, data: bytes) -> None:
        self.run.stats.errors["response"] += 1  # the server answered an unfinished request

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.run.live.discard(self.transport)
        if not self.leaving:
            self.run.server_closed(self.born, 1006)
        if not self.gone.done():
            self.gone.set_result(None)


async def _slowloris(run: _Run, user: int) -> None:
    while run.left() > 0:
        conn = _Trickle(run)
        run.stats.opened += 1
        try:
            await asyncio.wait_for(
                run.loop.create_connection(conn.itself, run.config.host, run.config.port), 5.0
            )
        except (TimeoutError, OSError) as exc:
            run.stats.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.1)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, run.left())):
                await asyncio.shield(conn.gone)
        if not conn.gone.done():
            run.stats.open_at_end += 1
            run.stats.oldest_at_end_s = max(run.stats.oldest_at_end_s, time.monotonic() - conn.born)
            conn.leaving = True
            if conn.transport is not None:
                conn.transport.abort()


async def _churn(run: _Run, user: int) -> None:
    # Each of the ``connections`` loops keeps its share of the rate.
    interval = run.config.connections / max(run.config.rate, 1e-9)
    next_at = time.monotonic()
    while run.left() > 0:
        next_at += interval
        conn = await run.open(user)
        if conn is not None:
            conn.leave()
            await conn.gone
        await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), run.left())))


KINDS: dict[str, Callable[[_Run, int], Coroutine[Any, Any, None]]] = {
    "flood": _flood,
    "slowloris": _slowloris,
    "oversized": _oversized,
    "slow_reader": _slow_reader,
    "churn": _churn,
}


async def attack(config: AttackConfig) -> AttackStats:
    """Run one attack from ``start_at`` to ``end_at``; its counters."""
    run = _Run(config)
    await asyncio.sleep(max(0.0, config.start_at - time.monotonic()))
    loops = [asyncio.create_task(KINDS[config.kind](run, i)) for i in range(config.connections)]
    try:
        # Every loop ends by itself at end_at; the margin covers a close in progress.
        done, pending = await asyncio.wait(loops, timeout=max(0.0, run.left()) + 5.0)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        run.abort_all()
        await asyncio.sleep(0.05)  # the transports' connection_lost callbacks
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            run.stats.failures[f"crashed:{type(task.exception()).__name__}"] += 1
    run.stats.failures.update({"loop_stuck": len(pending)} if pending else {})
    return run.stats


async def run_job(job: dict[str, Any], commands: Commands) -> None:
    """The ``attack`` role of :mod:`bench.harness._child`: ``attacking``, then ``result``."""
    config = AttackConfig(**job["config"])
    emit("ready")
    await asyncio.sleep(max(0.0, config.start_at - time.monotonic()))
    emit("attacking", at=time.monotonic())
    stats = await attack(config)
    emit("result", at=time.monotonic(), stats=stats.as_dict())
