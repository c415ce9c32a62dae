"""The soak's clients: connections that come and go, turns with random cancels and drops.

``slots`` connections are open at any time. Each slot loops: connect (a fresh
connection and handshake: one *cycle*), do a random number of turns one after the
other (mean ``turns_per_connection``), close 1000, connect again. A turn may be
*cancelled* (``cancel`` right after ``agent_started``: it must end ``run_cancelled``,
or ``agent_completed`` when the run won the race) or *dropped* (the connection is
aborted a few milliseconds into the run: its terminal event is lost on purpose).

Every other turn must get exactly one terminal event, and every frame is judged by
an isolation ledger. A ledger lives as long as its connection, so the client's
memory stays flat however many turns the soak does (the server's is what is watched).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import random
import secrets
import time
from collections import Counter
from typing import Any

import attrs
from websockets.uri import WebSocketURI, parse_uri

from app.auth._tokens import mint_token
from isolation.audit._ledger import CanaryIndex, CanaryOwner, UserLedger, derive_canary

from ..harness import Commands, FastClient, emit, summarize, user_name

__all__ = ["SoakConfig", "SoakDriver", "run_job"]

TERMINALS = frozenset({"agent_completed", "agent_error", "run_cancelled"})
#: Turn latencies kept (reservoir sample) for the percentiles.
LATENCY_SAMPLES = 20_000
MAX_SAMPLES = 20


@attrs.frozen
class SoakConfig:
    """What the soak's clients do for ``duration_s``: ``slots`` connections at a time,
    closed loop (the next turn as soon as the last one ended)."""

    host: str
    port: int
    secret: str
    path: str = "/ws"
    slots: int = 64
    duration_s: float = 600.0
    turns_per_connection: int = 10
    cancel_p: float = 0.05
    drop_p: float = 0.02
    connect_timeout_s: float = 10.0
    turn_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    drain_timeout_s: float = 30.0
    seed: str = "soak"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class SoakConn(FastClient):
    """One connection of one slot: its turns, then a close (or a deliberate drop)."""

    def __init__(self, driver: SoakDriver, slot: int, planned: int) -> None:
        super().__init__()
        self.driver = driver
        self.slot = slot
        self.planned = planned
        self.ledger = UserLedger(driver.users[slot], driver.index)
        self.ledger.begin_connection()
        self.ready: asyncio.Future[None] = driver.loop.create_future()
        self.finished: asyncio.Future[None] = driver.loop.create_future()
        self.turn_no = 0
        # client_ids are idempotency keys per thread: unique across this user's connections.
        self.nonce = secrets.token_hex(4)
        self.client_id: str | None = None  # the turn waiting for its terminal
        self.run_id: str | None = None
        self.fate = "normal"
        self.sent_at = 0.0
        self.ended: set[str] = set()  # run_ids that had their terminal
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.dropping = False

    def handshake(self) -> tuple[WebSocketURI, str]:
        return self.driver.uri, self.driver.tokens[self.slot]

    def itself(self) -> SoakConn:
        """The protocol factory of this very connection."""
        return self

    def on_rejected(self, status: int) -> None:
        self.driver.counts[f"connect:http_{status}"] += 1

    def on_protocol_error(self, what: str) -> None:
        self.driver.counts[f"protocol:{what}"] += 1

    # -- frames -----------------------------------------------------------------

    def on_text(self, text: str) -> None:
        self.ledger.observe(text)
        counts = self.driver.counts
        try:
            frame = json.loads(text)
            kind = frame["type"]
        except (ValueError, TypeError, KeyError):
            counts["bad_frame"] += 1
            return
        if kind in TERMINALS:
            run_id = frame.get("run_id")
            if run_id in self.ended or run_id != self.run_id or self.client_id is None:
                counts["extra_terminal"] += 1
                return
            self.ended.add(run_id)
            self._turn_done(kind)
        elif kind == "agent_started":
            if frame.get("client_id") != self.client_id or self.client_id is None:
                counts["stray_started"] += 1
                return
            self.run_id = frame.get("run_id")
            self._started()
        elif kind == "connection_ready":
            if not self.ready.done():
                self.ready.set_result(None)
            self.send_turn()
        elif kind == "error":
            code = frame.get("code")
            if self.client_id is not None and frame.get("ref") == self.client_id:
                counts[f"rejected:{code}"] += 1
                self._turn_done(None)
            elif code == "run_not_found" and frame.get("ref") in self.ended:
                counts["cancel_after_end"] += 1  # the cancel lost the race: fine
            else:
                counts[f"error:{code}"] += 1

    # -- turns ------------------------------------------------------------------

    def send_turn(self) -> None:
        driver = self.driver
        if self.turn_no >= self.planned or not self.is_open or not driver.more():
            self.finish_politely()
            return
        self.turn_no += 1
        client_id = f"c{self.turn_no}.{self.nonce}"
        text = f"{driver.texts[self.slot]} {self.turn_no} please count these words"
        thread_id = driver.threads[self.slot]
        self.ledger.sent_message(client_id=client_id, text=text, thread_id=thread_id)
        roll = driver.rng.random()
        self.fate = (
            "cancel" if roll < driver.config.cancel_p
            else "drop" if roll < driver.config.cancel_p + driver.config.drop_p
            else "normal"
        )  # fmt: skip
        self.client_id, self.run_id = client_id, None
        message = {"type": "user_message", "text": text, "thread_id": thread_id}
        message["client_id"] = client_id
        self.sent_at = time.perf_counter()
        self.timer = driver.loop.call_later(driver.config.turn_timeout_s, self._turn_timeout)
        self.send_text(json.dumps(message, separators=(",", ":")).encode())
        driver.counts["turns_sent"] += 1

    def _started(self) -> None:
        driver = self.driver
        if self.fate == "cancel" and self.run_id is not None:
            self.ledger.sent_cancel(self.run_id)
            cancel = json.dumps({"type": "cancel", "run_id": self.run_id}, separators=(",", ":"))
            self.send_text(cancel.encode())
            driver.counts["cancels_sent"] += 1
        elif self.fate == "drop":
            # A few milliseconds in: somewhere between agent_started and the terminal.
            driver.loop.call_later(driver.rng.random() * 0.004, self.drop)

    def _turn_done(self, kind: str | None) -> None:
        driver = self.driver
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if kind is not None:
            driver.counts[f"terminal:{kind}"] += 1
            if self.fate == "cancel" and kind != "run_cancelled":
                driver.counts["cancel_lost_race"] += 1
            if kind == "agent_completed":
                driver.latency((time.perf_counter() - self.sent_at) * 1000.0)
        driver.counts["turns_done"] += 1
        self.client_id = None
        if self.fate == "drop":
            driver.counts["drop_too_late"] += 1  # the run ended before the drop
            return
        self.send_turn()

    def _turn_timeout(self) -> None:
        self.timer = None
        self.driver.counts["turn_timeout"] += 1
        self.abort()

    # -- the end ----------------------------------------------------------------

    def drop(self) -> None:
        if self.closing or self.dropping or self.transport is None:
            return
        self.dropping = True
        if self.client_id is not None:
            self.driver.counts["turns_dropped"] += 1
        self.abort()

    def finish_politely(self) -> None:
        if self.closing or self.dropping:
            return
        self.closing = True
        self.close(1000)
        self.timer = self.driver.loop.call_later(self.driver.config.close_timeout_s, self.abort)

    def on_closed(self, code: int) -> None:
        driver = self.driver
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed {code} before connection_ready"))
        deliberate = self.closing or self.dropping
        if not deliberate and self.ready.done():
            driver.counts[f"unexpected_close:{code}"] += 1
            if self.client_id is not None:
                driver.counts["turns_lost"] += 1
        self.ledger.end_connection(lost=not self.closing or self.client_id is not None)
        driver.harvest(self.ledger)
        if not self.finished.done():
            self.finished.set_result(None)


class SoakDriver:
    """The slots, their counters, and what the harness is told."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.uri = parse_uri(f"ws://{config.host}:{config.port}{config.path}")
        self.rng = random.Random(config.seed)
        self.users = [user_name(i) for i in range(config.slots)]
        canaries = [derive_canary(config.seed, "user", u) for u in self.users]
        threads = [derive_canary(config.seed, "thread", u) for u in self.users]
        self.index = CanaryIndex.build(
            [(c, CanaryOwner(u, "user")) for c, u in zip(canaries, self.users, strict=True)]
            + [(t, CanaryOwner(u, "thread")) for t, u in zip(threads, self.users, strict=True)]
        )
        self.texts = [f"soak {c} turn" for c in canaries]
        self.threads = [f"t-{t}" for t in threads]
        now = time.time()
        self.tokens = [
            mint_token(
                secret=config.secret.encode(), algorithm="HS256", subject=u, ttl_s=3 * 3600.0,
                now=now,
            )
            for u in self.users
        ]  # fmt: skip
        self.counts: Counter[str] = Counter()
        self.violations = 0
        self.samples: list[str] = []
        self.anomalies: Counter[str] = Counter()
        self.turn_ms: list[float] = []
        self._seen_ms = 0
        self.stopping = False
        self.started = 0.0

    def latency(self, ms: float) -> None:
        self._seen_ms += 1
        if len(self.turn_ms) < LATENCY_SAMPLES:
            self.turn_ms.append(ms)
        else:
            slot = self.rng.randrange(self._seen_ms)
            if slot < LATENCY_SAMPLES:
                self.turn_ms[slot] = ms

    def harvest(self, ledger: UserLedger) -> None:
        """Take a finished connection's findings; the ledger is then dropped."""
        self.violations += ledger.violation_count
        for violation in ledger.violations:
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(violation.evidence)
        self.anomalies.update(a.kind for a in ledger.anomalies)

    def more(self) -> bool:
        if self.stopping:
            return False
        if time.monotonic() - self.started >= self.config.duration_s:
            self.stopping = True
        return not self.stopping

    def planned_turns(self) -> int:
        mean = max(1, self.config.turns_per_connection)
        return self.rng.randint(1, 2 * mean - 1)

    async def _slot(self, slot: int) -> None:
        cfg = self.config
        while self.more():
            conn = SoakConn(self, slot, self.planned_turns())
            try:
                async with asyncio.timeout(cfg.connect_timeout_s):
                    await self.loop.create_connection(conn.itself, cfg.host, cfg.port)
                    await conn.ready
            except (TimeoutError, OSError, ConnectionError) as exc:
                name = (
                    errno.errorcode.get(exc.errno or 0, "error")
                    if isinstance(exc, OSError) and exc.errno
                    else type(exc).__name__
                )
                self.counts[f"connect_failed:{name}"] += 1
                conn.abort()
                await asyncio.sleep(0.05)
                continue
            await conn.finished
            self.counts["cycles"] += 1

    async def run(self, progress: bool = True) -> dict[str, Any]:
        """Run the slots until the duration or the targets; then the result."""
        self.started = time.monotonic()
        reporter = asyncio.create_task(self._progress()) if progress else None
        try:
            slots = [asyncio.create_task(self._slot(i)) for i in range(self.config.slots)]
            done, pending = await asyncio.wait(
                slots, timeout=self.config.duration_s + self.config.drain_timeout_s
            )
            for task in pending:
                self.counts["slot_stuck"] += 1
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    self.counts[f"slot_crashed:{type(task.exception()).__name__}"] += 1
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        return self.result()

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit("progress", **self.brief())

    def brief(self) -> dict[str, Any]:
        c = self.counts
        return {
            "turns": c["turns_sent"],
            "cycles": c["cycles"],
            "elapsed_s": round(time.monotonic() - self.started, 2),
        }

    def result(self) -> dict[str, Any]:
        summary = summarize(self.turn_ms)
        return {
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "counts": dict(sorted(self.counts.items())),
            "violations": self.violations,
            "violation_samples": self.samples,
            "anomalies": dict(sorted(self.anomalies.items())),
            "turn_ms": None if summary is None else summary.as_dict(),
        }


async def run_job(job: dict[str, Any], commands: Commands) -> None:
    """The ``soak`` role of :mod:`bench.harness._child`: wait for ``go``, run, report ``result``."""
    driver = SoakDriver(SoakConfig(**job["config"]))
    emit("ready")
    if await commands.next() != "go":
        return
    emit("result", result=await driver.run())
