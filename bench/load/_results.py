"""Result values: what a load generator measured, what one server run measured.

Plain frozen values with ``as_dict`` for the results file; a load generator's result
also has ``from_dict``, as it crosses the process boundary as a JSON line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..harness import LatencySummary

__all__ = ["Cell", "LoadResult", "Measurement", "merge_load_results"]

#: One load of a run: (users, their mean think time in ms).
Cell = tuple[int, float]

#: Violation evidence kept per result (all are counted).
MAX_SAMPLES = 20


def _counts(value: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(value.items()))


@attrs.frozen
class LoadResult:
    """What one load generator (one client process) saw.

    ``turn_ms`` holds the latency of every turn that started in the window;
    ``turns`` counts the turns that *completed* within it (the throughput).
    ``cpu_s`` is the generator's own CPU time (user + system) during the window.
    """

    users: int
    connected: int
    connect_ms: tuple[float, ...]
    turn_ms: tuple[float, ...]
    turns: int
    window_s: float
    frames_rx: int
    frames_tx: int
    cpu_s: float
    errors: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    close_codes: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    violations: int = 0
    violation_samples: tuple[str, ...] = ()
    anomalies: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["connect_ms"] = [round(v, 3) for v in self.connect_ms]
        out["turn_ms"] = [round(v, 3) for v in self.turn_ms]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(
            users=int(data["users"]),
            connected=int(data["connected"]),
            connect_ms=tuple(float(v) for v in data["connect_ms"]),
            turn_ms=tuple(float(v) for v in data["turn_ms"]),
            turns=int(data["turns"]),
            window_s=float(data["window_s"]),
            frames_rx=int(data["frames_rx"]),
            frames_tx=int(data["frames_tx"]),
            cpu_s=float(data["cpu_s"]),
            errors={str(k): int(v) for k, v in data.get("errors", {}).items()},
            close_codes={str(k): int(v) for k, v in data.get("close_codes", {}).items()},
            violations=int(data.get("violations", 0)),
            violation_samples=tuple(str(v) for v in data.get("violation_samples", ())),
            anomalies={str(k): int(v) for k, v in data.get("anomalies", {}).items()},
        )


def merge_load_results(results: Iterable[LoadResult]) -> LoadResult:
    """One result for several client processes that shared the users of one run."""
    items = list(results)
    if not items:
        raise ValueError("nothing to merge")
    errors: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    anomalies: Counter[str] = Counter()
    samples: list[str] = []
    for item in items:
        errors.update(item.errors)
        closes.update(item.close_codes)
        anomalies.update(item.anomalies)
        samples.extend(item.violation_samples)
    return LoadResult(
        users=sum(r.users for r in items),
        connected=sum(r.connected for r in items),
        connect_ms=tuple(v for r in items for v in r.connect_ms),
        turn_ms=tuple(v for r in items for v in r.turn_ms),
        turns=sum(r.turns for r in items),
        window_s=max(r.window_s for r in items),
        frames_rx=sum(r.frames_rx for r in items),
        frames_tx=sum(r.frames_tx for r in items),
        cpu_s=sum(r.cpu_s for r in items),
        errors=errors,
        close_codes=closes,
        violations=sum(r.violations for r in items),
        violation_samples=tuple(samples[:MAX_SAMPLES]),
        anomalies=anomalies,
    )


@attrs.frozen
class Measurement:
    """One server at one user count and think time in one round.

    CPU figures are fractions of one core (1.0 = a core fully busy); ``client_cpu``
    is the load generators' CPU divided by the number of cores they are pinned to.
    """

    server: str
    users: int
    round: int
    verdict: str
    think_ms: float = attrs.field(kw_only=True)  # the users' mean think time
    turns: int = 0
    turns_per_s: float = 0.0
    frames_per_s: float = 0.0
    connected: int = 0
    connect: LatencySummary | None = None
    turn: LatencySummary | None = None
    errors: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    close_codes: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    violations: int = 0
    violation_samples: tuple[str, ...] = ()
    anomalies: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    server_cpu: float | None = None
    server_cpu_us_per_turn: float | None = None
    server_rss_idle: int | None = None
    server_rss_connected: int | None = None
    server_rss_load: int | None = None
    rss_per_conn: float | None = None
    server_core_other: float | None = None  # busy time on the server's core not its own
    server_core_steal: float | None = None  # time the hypervisor took from that core
    client_core_other: float | None = None  # the same on the clients' core(s)
    client_cpu: float = 0.0
    client_procs: int = 1
    note: str = ""
    #: ``serve --workers N``: the CPU figures above add up the supervisor and its workers.
    workers: int = 1
    supervisor_cpu: float | None = None  # fraction of a core, with workers > 1
    worker_cpu: tuple[float, ...] = ()  # fraction of a core, by worker index
    worker_conns: tuple[int, ...] = ()  # connections each worker held (its new fds)
    worker_cpu_us_per_turn: tuple[float, ...] = ()  # its CPU / the turns of its share
    #: On the redis store: the run's redis-server over the window (server-side cost).
    redis_cpu: float | None = None
    redis_cpu_us_per_turn: float | None = None
    redis_cmds_per_turn: float | None = None  # round trips and the commands of scripts
    redis_round_trips_per_turn: float | None = None  # commands the servers sent
    redis_calls: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)

    @property
    def valid(self) -> bool:
        return self.verdict == "ok"

    @property
    def total_cpu_us_per_turn(self) -> float | None:
        """Server CPU per turn plus Redis's (the server-side cost of a turn)."""
        if self.server_cpu_us_per_turn is None:
            return None
        return self.server_cpu_us_per_turn + (self.redis_cpu_us_per_turn or 0.0)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
