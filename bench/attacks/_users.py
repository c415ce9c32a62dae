"""The well-behaved users of ``bench attacks``: the bench load generator, with time stamps.

:class:`~bench.load._generator.LoadGenerator` keeps turn latencies as one list; the attacks
need to know *when* each turn was sent, to cut one run into a no-attack baseline
window and one window per attack. :class:`TimedLoadGenerator` also keeps the send
time of every turn (``time.monotonic``: one clock for every process of the machine)
and the time of every connection lost.
"""

from __future__ import annotations

import time
from typing import Any

from ..harness import Commands, emit
from ..load import LoadConfig, LoadGenerator, SimUser

__all__ = ["TimedLoadGenerator", "run_job"]


class TimedLoadGenerator(LoadGenerator):
    """A load generator that stamps every turn and every lost connection."""

    def __init__(self, config: LoadConfig) -> None:
        super().__init__(config)
        # perf_counter for the latency (as the base class), monotonic for the stamps.
        self.offset = time.monotonic() - time.perf_counter()
        self.timed: list[tuple[float, float]] = []  # (sent, monotonic; latency, ms)
        self.failed: list[tuple[float, str]] = []  # (sent, monotonic; what)
        self.lost_at: list[tuple[float, int]] = []  # (when, monotonic; close code)

    def record_turn(self, sent_at: float, done_at: float, error: str | None) -> None:
        super().record_turn(sent_at, done_at, error)
        if error is None:
            self.timed.append((sent_at + self.offset, (done_at - sent_at) * 1000.0))
        else:
            self.failed.append((sent_at + self.offset, error))

    def on_lost(self, user: SimUser, code: int) -> None:
        if not user.lost and user.established and not user.closing:
            self.lost_at.append((time.monotonic(), code))
        super().on_lost(user, code)


async def run_job(job: dict[str, Any], commands: Commands) -> None:
    """The ``users`` role of :mod:`bench.harness._child`.

    Connects every user (``connected``), waits for ``go``, runs turns for the
    configured duration (``started`` carries the monotonic start), closes, and writes
    ``result``: the merged load result plus the stamped turns and losses.
    """
    config = LoadConfig.from_dict(job["config"])
    gen = TimedLoadGenerator(config)
    try:
        await gen.connect_all()
        emit("connected", connected=len(gen.connected), errors=dict(gen.errors))
        if await commands.next() == "go":
            emit("started", at=time.monotonic())
            await gen.run_window()
    finally:
        await gen.close_all()
    result = gen.result().as_dict()
    result["turn_ms"] = []  # the stamped turns below carry them
    emit(
        "result",
        result=result,
        timed=[[round(t, 4), round(ms, 3)] for t, ms in gen.timed],
        failed=[[round(t, 4), what] for t, what in gen.failed],
        lost=[[round(t, 4), code] for t, code in gen.lost_at],
    )
