"""From measurements to the table: medians over rounds, ratios, targets, Markdown.

Pure functions; the caller prints and writes what they return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..harness import OK, ORDER, median
from ._results import Cell, Measurement

__all__ = [
    "BASELINE",
    "LEAN",
    "Row",
    "Target",
    "evaluate_targets",
    "render_markdown",
    "render_targets",
    "rows_from",
]

BASELINE = "fastapi"
LEAN = "enclave-lean"
BARE = "bare-trio"
TARGET_USERS = 1000
#: The hot-path targets (throughput, session overhead) are defined without think time.
TARGET_THINK_MS = 0.0
#: The redis store's target was set at the default load's think time.
REDIS_TARGET_THINK_MS = 100.0
#: Lean against FastAPI+uvicorn in turns/s: with an agent that does not wait, and one that does.
TARGET_SPEEDUP = 1.2
TARGET_SPEEDUP_WAITING = 1.0
TARGET_KIB_PER_CONN = 14.0
#: Server CPU with 10,000 idle connections and the server's default keepalive.
TARGET_IDLE_CPU = 0.05
TARGET_OVERHEAD = 0.15
#: Server-side CPU per turn on the redis store (server + redis-server) against SQLite's.
TARGET_REDIS_VS_SQLITE = 1.5


@attrs.frozen
class Row:
    """One server at one user count and think time: medians over the rounds that are valid.

    When no round is valid the medians are over all rounds and ``verdict`` says why.
    """

    server: str
    users: int
    rounds: int
    valid_rounds: int
    verdict: str
    think_ms: float = attrs.field(kw_only=True)
    turns_per_s: float | None = None
    frames_per_s: float | None = None
    turn_p50: float | None = None
    turn_p99: float | None = None
    turn_p999: float | None = None
    connect_p50: float | None = None
    connect_p99: float | None = None
    server_cpu: float | None = None
    cpu_us_per_turn: float | None = None
    rss_per_conn: float | None = None
    client_cpu: float | None = None
    errors: int = 0
    violations: int = 0
    ratio: float | None = None  # turns/s over the baseline's at the same users and think
    workers: int = 1
    worker_cpu: tuple[float, ...] = ()  # by worker index, medians
    worker_cpu_us_per_turn: tuple[float, ...] = ()
    redis_cmds_per_turn: float | None = None
    redis_round_trips_per_turn: float | None = None
    redis_cpu_us_per_turn: float | None = None
    total_cpu_us_per_turn: float | None = None  # server + redis-server

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _med(items: Sequence[Measurement], get: Callable[[Measurement], float | None]) -> float | None:
    return median(v for v in (get(m) for m in items) if v is not None)


def _per_index(
    items: Sequence[Measurement], get: Callable[[Measurement], Sequence[float]]
) -> tuple[float, ...]:
    """Medians by position (worker index) over the measurements that have that position."""
    width = max((len(get(m)) for m in items), default=0)
    out: list[float] = []
    for i in range(width):
        value = median(get(m)[i] for m in items if len(get(m)) > i)
        out.append(0.0 if value is None else value)
    return tuple(out)


#: Rows are per server and load cell: (server, users, think_ms).
Key = tuple[str, int, float]


def _row(key: Key, group: Sequence[Measurement]) -> Row:
    server, users, think_ms = key
    valid = [m for m in group if m.valid]
    unavailable = [m for m in group if m.verdict.startswith("unavailable")]
    if unavailable and not valid:
        return Row(server, users, len(group), 0, unavailable[0].verdict, think_ms=think_ms)
    use = valid or list(group)
    verdict = OK if valid else use[0].verdict
    if valid and len(valid) < len(group):
        verdict = f"ok ({len(group) - len(valid)} of {len(group)} rounds invalid)"
    return Row(
        server=server,
        users=users,
        think_ms=think_ms,
        rounds=len(group),
        valid_rounds=len(valid),
        verdict=verdict,
        turns_per_s=_med(use, lambda m: m.turns_per_s),
        frames_per_s=_med(use, lambda m: m.frames_per_s),
        turn_p50=_med(use, lambda m: m.turn.p50 if m.turn else None),
        turn_p99=_med(use, lambda m: m.turn.p99 if m.turn else None),
        turn_p999=_med(use, lambda m: m.turn.p999 if m.turn else None),
        connect_p50=_med(use, lambda m: m.connect.p50 if m.connect else None),
        connect_p99=_med(use, lambda m: m.connect.p99 if m.connect else None),
        server_cpu=_med(use, lambda m: m.server_cpu),
        cpu_us_per_turn=_med(use, lambda m: m.server_cpu_us_per_turn),
        rss_per_conn=_med(use, lambda m: m.rss_per_conn),
        client_cpu=max(m.client_cpu for m in group),
        errors=sum(m.error_count for m in group),
        violations=sum(m.violations for m in group),
        workers=max(m.workers for m in group),
        worker_cpu=_per_index(use, lambda m: m.worker_cpu),
        worker_cpu_us_per_turn=_per_index(use, lambda m: m.worker_cpu_us_per_turn),
        redis_cmds_per_turn=_med(use, lambda m: m.redis_cmds_per_turn),
        redis_round_trips_per_turn=_med(use, lambda m: m.redis_round_trips_per_turn),
        redis_cpu_us_per_turn=_med(use, lambda m: m.redis_cpu_us_per_turn),
        total_cpu_us_per_turn=_med(use, lambda m: m.total_cpu_us_per_turn),
    )


def rows_from(
    measurements: Iterable[Measurement],
    *,
    order: Sequence[str] = ORDER,
    baseline: str = BASELINE,
) -> list[Row]:
    """One row per server, user count and think time, its ratio to ``baseline``'s row of
    the same users and think time. Sorted by think time (in the order first measured, so
    a run's blocks follow its plan), then user count, then ``order`` (servers not in it
    last, by name)."""
    groups: dict[Key, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.server, m.users, m.think_ms), []).append(m)
    rows = {key: _row(key, group) for key, group in groups.items()}
    out: list[Row] = []
    for (_, users, think_ms), row in rows.items():
        base = rows.get((baseline, users, think_ms))
        ratio = None
        if base is not None and base.turns_per_s and row.turns_per_s is not None:
            ratio = row.turns_per_s / base.turns_per_s
        out.append(attrs.evolve(row, ratio=ratio))
    thinks = {think: i for i, think in enumerate(dict.fromkeys(k[2] for k in groups))}
    rank = {name: i for i, name in enumerate(order)}
    out.sort(key=lambda r: (thinks[r.think_ms], r.users, rank.get(r.server, len(rank)), r.server))
    return out


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


COLUMNS = (
    "server",
    "users",
    "turns/s",
    "x FastAPI",
    "frames/s",
    "turn p50 ms",
    "turn p99 ms",
    "turn p99.9 ms",
    "connect p50/p99 ms",
    "server CPU",
    "CPU µs/turn",
    "RSS/conn KiB",
    "client CPU",
    "errors",
    "violations",
    "verdict",
)


#: Shown after ``users`` when the rows have more than one think time.
THINK_COLUMN = "think ms"


def _cells(row: Row, labels: Mapping[str, str]) -> list[str]:
    connect = (
        "-"
        if row.connect_p50 is None
        else f"{row.connect_p50:.1f} / {_num(row.connect_p99, '{:.1f}')}"
    )
    rss = None if row.rss_per_conn is None else row.rss_per_conn / 1024
    return [
        labels.get(row.server, row.server),
        f"{row.users:,}",
        _num(row.turns_per_s),
        _num(row.ratio, "{:.2f}x"),
        _num(row.frames_per_s),
        _num(row.turn_p50, "{:.1f}"),
        _num(row.turn_p99, "{:.1f}"),
        _num(row.turn_p999, "{:.1f}"),
        connect,
        _pct(row.server_cpu),
        _num(row.cpu_us_per_turn),
        _num(rss, "{:.1f}"),
        _pct(row.client_cpu),
        str(row.errors),
        str(row.violations),
        row.verdict,
    ]


#: Shown when some row has several workers.
WORKER_COLUMNS = ("CPU per worker", "µs/turn per worker")
#: Shown when some row is on the redis store.
REDIS_COLUMNS = (
    "redis cmds/turn",
    "redis round trips/turn",
    "redis CPU µs/turn",
    "server+redis µs/turn",
)


def _joined(values: Sequence[float], fmt: str) -> str:
    return " / ".join(fmt.format(v) for v in values) if values else "-"


def _extra_cells(row: Row, workers: bool, redis: bool) -> list[str]:
    cells: list[str] = []
    if workers:
        cells += [
            _joined([v * 100 for v in row.worker_cpu], "{:.0f}%"),
            _joined(row.worker_cpu_us_per_turn, "{:,.0f}"),
        ]
    if redis:
        on_redis = row.redis_cmds_per_turn is not None
        cells += [
            _num(row.redis_cmds_per_turn, "{:.1f}"),
            _num(row.redis_round_trips_per_turn, "{:.2f}"),
            _num(row.redis_cpu_us_per_turn),
            _num(row.total_cpu_us_per_turn if on_redis else None),
        ]
    return cells


def render_markdown(rows: Sequence[Row], labels: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (numbers are medians over rounds).

    A think-time column (after users) is added only when the rows have several think
    times, columns per worker and of Redis only when some row has them; the verdict
    stays last."""
    labels = labels or {}
    think = len({r.think_ms for r in rows}) > 1
    workers = any(r.workers > 1 for r in rows)
    redis = any(r.redis_cmds_per_turn is not None for r in rows)
    extra = (WORKER_COLUMNS if workers else ()) + (REDIS_COLUMNS if redis else ())
    columns = (*COLUMNS[:2], *([THINK_COLUMN] if think else []), *COLUMNS[2:-1], *extra)
    columns = (*columns, COLUMNS[-1])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|"
        + "|".join("---" if i == 0 or i == len(columns) - 1 else "--:" for i in range(len(columns)))
        + "|",
    ]
    for row in rows:
        base = _cells(row, labels)
        think_cell = [f"{row.think_ms:g}"] if think else []
        raw = [*base[:2], *think_cell, *base[2:-1], *_extra_cells(row, workers, redis), base[-1]]
        cells = [" ".join(c.split()).replace("|", "\\|") for c in raw]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@attrs.frozen
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _find(rows: Sequence[Row], server: str, cell: Cell) -> Row | None:
    for row in rows:
        if (row.server, row.users, row.think_ms) == (server, *cell) and row.turns_per_s is not None:
            return row
    return None


def _target_cell(rows: Sequence[Row], think_ms: float) -> Cell | None:
    """The cell closest to where a target is defined: the user count closest to
    ``TARGET_USERS``, then at that count the think time closest to ``think_ms``."""
    if not rows:
        return None
    users = min({r.users for r in rows}, key=lambda n: (abs(n - TARGET_USERS), n))
    thinks = {r.think_ms for r in rows if r.users == users}
    return users, min(thinks, key=lambda t: (abs(t - think_ms), t))


def _at(cell: Cell) -> str:
    return f"at {cell[0]:,} users, think {cell[1]:g} ms"


def _speedup(rows: Sequence[Row], cell: Cell | None, agent_delay_ms: float) -> Target:
    target = TARGET_SPEEDUP if agent_delay_ms <= 0 else TARGET_SPEEDUP_WAITING
    goal = (
        f"≥ {target}x FastAPI+uvicorn turns/s at {TARGET_USERS:,} users, think "
        f"{TARGET_THINK_MS:g} ms, with agent delay {agent_delay_ms:g} ms, p99 no worse"
    )
    name = "lean throughput"
    if cell is None:
        return Target(name, goal, "no measurement", None)
    lean, base = _find(rows, LEAN, cell), _find(rows, BASELINE, cell)
    where = f" ({_at(cell)})"
    if lean is None or base is None or lean.ratio is None:
        missing = "enclave-lean" if lean is None else "fastapi"
        return Target(name, goal, f"{missing} not measured{where}", None)
    p99_ok = (
        lean.turn_p99 is not None and base.turn_p99 is not None and lean.turn_p99 <= base.turn_p99
    )
    p99 = f"p99 {_num(lean.turn_p99, '{:.1f}')} vs {_num(base.turn_p99, '{:.1f}')} ms"
    valid = lean.valid_rounds > 0 and base.valid_rounds > 0
    measured = f"{lean.ratio:.2f}x, {p99}{where}" + ("" if valid else " (INVALID rounds)")
    met = lean.ratio >= target and p99_ok and valid
    return Target(name, goal, measured, met)


def _memory(rows: Sequence[Row], capacity: Mapping[str, Any] | None) -> Target:
    goal = f"≤ {TARGET_KIB_PER_CONN:g} KiB RSS per idle authenticated connection"
    name = "memory per connection"
    if capacity and capacity.get("rss_per_conn") is not None:
        kib = float(capacity["rss_per_conn"]) / 1024
        server = capacity.get("server", "?")
        held = capacity.get("connected", 0)
        measured = f"{kib:.1f} KiB ({server}, capacity run, {held:,} connections)"
        return Target(name, goal, measured, kib <= TARGET_KIB_PER_CONN)
    lean = [r for r in rows if r.server == LEAN and r.rss_per_conn is not None]
    if not lean:
        return Target(name, goal, "not measured (run `python -m bench capacity`)", None)
    row = max(lean, key=lambda r: r.users)
    assert row.rss_per_conn is not None
    kib = row.rss_per_conn / 1024
    measured = f"{kib:.1f} KiB (enclave-lean, {row.users:,} users of the load run)"
    return Target(name, goal, measured, kib <= TARGET_KIB_PER_CONN)


def _overhead(rows: Sequence[Row], cell: Cell | None) -> Target:
    goal = (
        f"≤ {TARGET_OVERHEAD:.0%} server CPU per turn over bare Trio on the lean transport, "
        f"think {TARGET_THINK_MS:g} ms"
    )
    name = "session overhead"
    if cell is None:
        return Target(name, goal, "no measurement", None)
    lean, bare = _find(rows, LEAN, cell), _find(rows, BARE, cell)
    if lean is None or bare is None:
        missing = "enclave-lean" if lean is None else "bare-trio"
        return Target(name, goal, f"{missing} not measured ({_at(cell)})", None)
    if lean.cpu_us_per_turn is None or not bare.cpu_us_per_turn:
        return Target(name, goal, "no CPU figures", None)
    overhead = lean.cpu_us_per_turn / bare.cpu_us_per_turn - 1
    tput = None
    if lean.turns_per_s and bare.turns_per_s:
        tput = bare.turns_per_s / lean.turns_per_s - 1
    measured = (
        f"{overhead:+.0%} CPU/turn ({lean.cpu_us_per_turn:,.0f} vs {bare.cpu_us_per_turn:,.0f} µs)"
        + ("" if tput is None else f", bare-trio turns/s {tput:+.0%} over lean")
        + f" {_at(cell)}"
    )
    return Target(name, goal, measured, overhead <= TARGET_OVERHEAD)


def _redis_vs_sqlite(rows: Sequence[Row], cell: Cell | None) -> Target | None:
    """Server-side CPU per turn on Redis (the server's and redis-server's) against SQLite,
    one worker each; None when the run has no such pair."""
    goal = f"≤ {TARGET_REDIS_VS_SQLITE}x the server CPU per turn of the SQLite store (1 worker)"
    if cell is None:
        return None
    for row in rows:
        if (row.users, row.think_ms) != cell or not row.server.endswith("+redis"):
            continue
        if row.workers != 1:
            continue
        base = row.server.removesuffix("+redis")
        sqlite = _find(rows, f"{base}+sqlite", cell)
        if sqlite is None or not sqlite.cpu_us_per_turn or row.cpu_us_per_turn is None:
            continue
        own = row.cpu_us_per_turn / sqlite.cpu_us_per_turn
        total = (row.total_cpu_us_per_turn or row.cpu_us_per_turn) / sqlite.cpu_us_per_turn
        valid = row.valid_rounds > 0 and sqlite.valid_rounds > 0
        measured = (
            f"{total:.2f}x with Redis's CPU ({row.total_cpu_us_per_turn or 0:,.0f} vs "
            f"{sqlite.cpu_us_per_turn:,.0f} µs), {own:.2f}x the server's alone "
            f"({row.cpu_us_per_turn:,.0f} µs), {base} {_at(cell)}"
            + ("" if valid else " (INVALID rounds)")
        )
        return Target("redis store CPU", goal, measured, total <= TARGET_REDIS_VS_SQLITE and valid)
    return None


def _isolation(rows: Sequence[Row]) -> Target:
    total = sum(r.violations for r in rows)
    checked = sum(1 for r in rows if r.turns_per_s is not None)
    measured = f"{total} violation(s) over {checked} server x users x think-time cells"
    return Target("isolation", "zero violations in every frame", measured, total == 0)


def evaluate_targets(
    rows: Sequence[Row], capacity: Mapping[str, Any] | None = None, agent_delay_ms: float = 2.0
) -> list[Target]:
    """The targets; the throughput goal depends on whether the agent waits (its delay).

    Each target reads the rows nearest to where it is defined: 1,000 users, think 0 for
    throughput and overhead (so a run's think-0 row at 1,000 users, when it has one), the
    default load's think for the redis store; memory, the capacity run or the largest
    user count."""
    hot = _target_cell(rows, TARGET_THINK_MS)
    redis = _redis_vs_sqlite(rows, _target_cell(rows, REDIS_TARGET_THINK_MS))
    return [
        _speedup(rows, hot, agent_delay_ms),
        _memory(rows, capacity),
        _overhead(rows, hot),
        *([redis] if redis is not None else []),
        _isolation(rows),
    ]


def render_targets(targets: Sequence[Target]) -> str:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in targets:
        met = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.goal} | {t.measured} | {met} |")
    return "\n".join(lines) + "\n"
