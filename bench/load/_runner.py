"""``python -m bench run``: every server at every load cell (user count and think time),
interleaved, in rounds.

For each round, for each cell, each server in turn (the order rotates by
round) is started fresh on the server core, its idle RSS read, the users ramped by
load-generator processes on the client core(s), its connected RSS read, the turns
run for the window while its CPU is sampled from /proc, then everything stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..harness import (
    ORDER,
    ChildError,
    CoreTimes,
    ProcessSet,
    ProcSample,
    Progress,
    RunningServer,
    ServerOptions,
    ServerSpec,
    ServerUnavailable,
    Topology,
    core_load,
    machine_info,
    raise_nofile,
    read_cores,
    read_fds,
    read_sample,
    read_tree,
    read_worker_index,
    start_server,
    sum_samples,
    summarize,
    topology,
    verdict,
)
from ..harness._redis import (
    BenchRedis,
    MonitorSample,
    MonitorThread,
    RedisError,
    RedisWindow,
    bench_redis,
    redis_window,
)
from ..harness._spawn import free_port, python_argv
from ._charts import write_charts
from ._generator import LoadConfig
from ._pool import GeneratorPool
from ._report import (
    Row,
    Target,
    evaluate_targets,
    render_markdown,
    render_targets,
    rows_from,
)
from ._results import Cell, LoadResult, Measurement, merge_load_results

__all__ = ["Plan", "measure", "run_benchmark"]

#: Seconds the server gets after it listens before its idle RSS is read.
SETTLE_S = 0.5
#: Seconds of MONITOR at the end of the warm-up (redis store): which calls ran in scripts.
MONITOR_S = 1.0


@attrs.frozen
class Plan:
    """Everything a run does."""

    users: tuple[int, ...]
    servers: tuple[ServerSpec, ...]
    #: Mean think times, each at every user count (like the users, a dimension of the run).
    think_ms: tuple[float, ...] = (100.0,)
    #: (users, think_ms) measured besides users x think_ms: one cell without multiplying
    #: the run (the default run's think 0 at 1,000 users).
    extra_cells: tuple[Cell, ...] = ()
    agent_delay_ms: float = 2.0
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rounds: int = 1
    client_procs: int = 1
    connect_concurrency: int = 64
    loop: str = "auto"
    server_core: int | None = 0
    seed: str = "bench"
    quick: bool = False
    #: ``echo`` (waits are agent_delay_ms sleeps) or ``llm`` (--agent openai streaming from
    #: the mock model server: waits are network I/O).
    agent: str = "echo"
    llm_tokens: int = 8
    llm_token_delay_ms: float = 5.0

    def cells(self) -> tuple[Cell, ...]:
        """Every cell once, by user count; at one count, the order of think_ms, then extras."""
        crossed = [(users, think) for users in self.users for think in self.think_ms]
        unique = dict.fromkeys([*crossed, *self.extra_cells])
        return tuple(sorted(unique, key=lambda cell: cell[0]))  # stable: keeps that order

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["servers"] = [s.name for s in self.servers]
        out["cells"] = [list(cell) for cell in self.cells()]  # what the run measured, in order
        return out


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fds(pids: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = read_fds(pid)
    return out


def _pid_sample(pid: int) -> ProcSample | None:
    try:
        return read_sample(pid)
    except (OSError, ValueError):
        return None


@attrs.frozen
class WorkerFigures:
    """Per process of ``serve --workers N``: CPU over the window and connections held."""

    supervisor_cpu: float | None
    cpu: tuple[float, ...]  # fraction of a core, by worker index
    conns: tuple[int, ...]
    cpu_us_per_turn: tuple[float, ...]


def worker_figures(
    root_pid: int,
    start: dict[int, ProcSample],
    end: dict[int, ProcSample],
    idle_fds: dict[int, int],
    connected_fds: dict[int, int],
    index: dict[int, int],
    *,
    window_s: float,
    turns: float,
) -> WorkerFigures:
    """Split the window's CPU by process: the supervisor (``root_pid``) and each worker
    (by ``ENCLAVE_WORKER_INDEX``, else by pid). A worker's turns are taken as its share of
    the connections (its fds opened between idle and connected) of all the turns."""
    workers = sorted(
        (p for p in end if p != root_pid and p in start), key=lambda p: (index.get(p, p), p)
    )
    sup = None
    if root_pid in start and root_pid in end and window_s > 0:
        sup = (end[root_pid].cpu_s - start[root_pid].cpu_s) / window_s
    cpu = tuple(
        (end[p].cpu_s - start[p].cpu_s) / window_s if window_s > 0 else 0.0 for p in workers
    )
    conns = tuple(max(0, connected_fds.get(p, 0) - idle_fds.get(p, 0)) for p in workers)
    held = sum(conns)
    per_turn: list[float] = []
    for p, c in zip(workers, conns, strict=True):
        share = turns * c / held if held else 0.0
        used = end[p].cpu_s - start[p].cpu_s
        per_turn.append(used / share * 1e6 if share else 0.0)
    return WorkerFigures(sup, cpu, conns, tuple(per_turn))


def _load_config(plan: Plan, port: int, secret: str, cell: Cell) -> LoadConfig:
    users, think_ms = cell
    return LoadConfig(
        host="127.0.0.1",
        port=port,
        secret=secret,
        users=users,
        think_s=think_ms / 1000,
        duration_s=plan.duration_s,
        warmup_s=plan.warmup_s,
        connect_concurrency=plan.connect_concurrency,
        ramp_timeout_s=60.0 + users / 50,
        seed=plan.seed,
    )


@attrs.frozen
class Probe:
    """What the harness read from the server around the window."""

    idle: ProcSample | None
    connected: ProcSample | None
    start: ProcSample | None
    end: ProcSample | None
    window_s: float
    harness_cpu_s: float
    cores_start: dict[int, CoreTimes] = attrs.field(factory=dict)
    cores_end: dict[int, CoreTimes] = attrs.field(factory=dict)
    workers: WorkerFigures | None = None  # serve --workers N (N > 1)
    redis: RedisWindow | None = None  # the redis store: what Redis did in the window


def drive(
    procs: ProcessSet,
    server: RunningServer,
    load: LoadConfig,
    *,
    mode: str,
    plan_loop: str,
    client_procs: int,
    topo: Topology,
    log_dir: Path,
    progress: Progress,
    redis: BenchRedis | None = None,
) -> tuple[LoadResult, Probe]:
    """Run the load-generator processes against a started server; raise ChildError.

    With ``redis`` (the server's store), Redis's commands and CPU over the window are
    read too: a MONITOR sample at the end of the warm-up, stats reset at the window's start.
    """
    time.sleep(SETTLE_S)
    idle_parts = read_tree(server.pid)
    idle = sum_samples(idle_parts)
    idle_fds = _fds(list(idle_parts))
    ramp_timeout = load.ramp_timeout_s + 30
    with GeneratorPool(
        procs,
        load,
        processes=client_procs,
        cores=topo.client_cores,
        mode=mode,
        loop=plan_loop,
        log_dir=log_dir,
        nofile=load.users + 1024,
    ) as pool:
        progress.update(f"connecting {load.users:,} users")
        lines = pool.wait_for("connected", ramp_timeout)
        connected_count = sum(int(line.get("connected", 0)) for line in lines)
        time.sleep(0.2)
        connected_parts = read_tree(server.pid)
        connected = sum_samples(connected_parts)
        connected_fds = _fds(list(connected_parts))
        per_worker: dict[int, tuple[int, int]] = {}

        def show(line: dict[str, Any]) -> None:
            per_worker[int(line.get("pid", 0))] = (int(line["turns"]), int(line["frames"]))

        pool.send_all("go")
        monitor: MonitorThread | None = None
        if load.warmup_s > 0:
            progress.update(f"{connected_count:,} connected, warming up {load.warmup_s:g} s")
            warm_end = time.monotonic() + load.warmup_s
            if redis is not None:
                sample_s = min(MONITOR_S, load.warmup_s / 2)
                pool.pump_until(warm_end - sample_s - 0.1, show)
                monitor = MonitorThread(redis.host, redis.port, sample_s)
            pool.pump_until(warm_end, show)
        redis_start = None
        sample = MonitorSample()
        if redis is not None:
            if monitor is not None:
                sample = monitor.join(MONITOR_S + 5)
            redis.reset_stats()
            redis_start = _pid_sample(redis.pid)
        harness0 = _cpu_self()
        t0 = time.monotonic()
        start_parts = read_tree(server.pid)
        start = sum_samples(start_parts)
        cores_start = read_cores()
        deadline = t0 + load.duration_s
        while time.monotonic() < deadline:
            pool.pump_until(min(deadline, time.monotonic() + 0.5), show)
            turns = sum(t for t, _ in per_worker.values())
            elapsed = time.monotonic() - t0
            what = "holding" if mode == "hold" else f"{turns:,} turns"
            progress.update(
                f"{connected_count:,} connected, {what}, {elapsed:4.1f}/{load.duration_s:g} s"
            )
        end_parts = read_tree(server.pid)
        end = sum_samples(end_parts)
        cores_end = read_cores()
        window = time.monotonic() - t0
        harness_cpu = _cpu_self() - harness0
        window_redis = None
        if redis is not None:
            stats = redis.commandstats()
            redis_end = _pid_sample(redis.pid)
            cpu = (
                redis_end.cpu_s - redis_start.cpu_s
                if redis_end is not None and redis_start is not None
                else None
            )
            window_redis = redis_window(stats, sample, cpu)
        if not server.alive():
            raise ChildError(f"the server exited during the window ({server.proc.returncode})")
        results = pool.wait_for(
            # + the isolation check of every frame, after the window
            "result",
            load.drain_timeout_s + load.close_timeout_s + 120,
            on_progress=show,
        )
    merged = merge_load_results(LoadResult.from_dict(line["result"]) for line in results)
    figures = None
    if len(end_parts) > 1:
        index = {p: i for p in end_parts if (i := read_worker_index(p)) is not None}
        figures = worker_figures(
            server.pid,
            start_parts,
            end_parts,
            idle_fds,
            connected_fds,
            index,
            window_s=window,
            turns=merged.turns * window / max(merged.window_s or window, 1e-9),
        )
    probe = Probe(
        idle,
        connected,
        start,
        end,
        window,
        harness_cpu,
        cores_start,
        cores_end,
        workers=figures,
        redis=window_redis,
    )
    return merged, probe


def to_measurement(
    spec: ServerSpec,
    users: int,
    round_no: int,
    result: LoadResult,
    probe: Probe,
    *,
    think_ms: float,
    client_cores: int,
    client_procs: int,
    server_core: int | None = None,
    client_core_ids: tuple[int, ...] | None = None,
    run_turns: bool = True,
    shared_cores: tuple[int, ...] | None = None,
    workers: int = 1,
) -> Measurement:
    """Turn what the clients and the harness saw into one measurement.

    ``shared_cores``: the server (several workers) shares these cores with the clients;
    what the cores did beyond the server, Redis and the clients is then the noise, and the
    per-core checks are not made. Redis (``probe.redis``) runs on the server's core(s).
    """
    window = result.window_s or probe.window_s
    client_abs = (result.cpu_s + probe.harness_cpu_s) / max(window, 1e-9)
    client_cpu = client_abs / client_cores
    server_cpu = per_turn = None
    turns_in_probe = result.turns * probe.window_s / max(window, 1e-9)
    if probe.start is not None and probe.end is not None and probe.window_s > 0:
        used = probe.end.cpu_s - probe.start.cpu_s
        server_cpu = used / probe.window_s
        if result.turns:
            per_turn = used / turns_in_probe * 1e6
    redis = probe.redis
    redis_cpu = None
    if redis is not None and redis.cpu_s is not None and probe.window_s > 0:
        redis_cpu = redis.cpu_s / probe.window_s
    other = steal = None
    client_other = None
    if shared_cores:
        loads = [core_load(probe.cores_start, probe.cores_end, c) for c in shared_cores]
        if all(x is not None for x in loads):
            busy = sum(x[0] for x in loads if x is not None)
            steal = sum(x[1] for x in loads if x is not None)
            other = max(0.0, busy - (server_cpu or 0.0) - (redis_cpu or 0.0) - client_abs)
    else:
        load = (
            None
            if server_core is None
            else core_load(probe.cores_start, probe.cores_end, server_core)
        )
        if load is not None:
            other = max(0.0, load[0] - (server_cpu or 0.0) - (redis_cpu or 0.0))
            steal = load[1]
        loads = [core_load(probe.cores_start, probe.cores_end, c) for c in client_core_ids or ()]
        if loads and all(x is not None for x in loads):
            used = sum(x[0] + x[1] for x in loads if x is not None) / len(loads)
            client_other = max(0.0, used - client_cpu)
    figures = probe.workers

    def per_turn_of(amount: float) -> float | None:
        return amount / turns_in_probe if result.turns else None

    rss_per_conn = None
    if probe.idle is not None and probe.connected is not None and result.connected:
        rss_per_conn = (probe.connected.rss_bytes - probe.idle.rss_bytes) / result.connected
    return Measurement(
        server=spec.name,
        users=users,
        think_ms=think_ms,
        round=round_no,
        verdict=verdict(
            client_cpu=client_cpu,
            users=users,
            connected=result.connected,
            turns=result.turns,
            run_turns=run_turns,
            server_core_other=None if other is None else other + (steal or 0.0),
            client_core_other=client_other,
        ),
        turns=result.turns,
        turns_per_s=result.turns / window if window else 0.0,
        frames_per_s=(result.frames_rx + result.frames_tx) / window if window else 0.0,
        connected=result.connected,
        connect=summarize(result.connect_ms),
        turn=summarize(result.turn_ms),
        errors=result.errors,
        close_codes=result.close_codes,
        violations=result.violations,
        violation_samples=result.violation_samples,
        anomalies=result.anomalies,
        server_cpu=server_cpu,
        server_cpu_us_per_turn=per_turn,
        server_rss_idle=probe.idle.rss_bytes if probe.idle else None,
        server_rss_connected=probe.connected.rss_bytes if probe.connected else None,
        server_rss_load=probe.end.rss_bytes if probe.end else None,
        rss_per_conn=rss_per_conn,
        server_core_other=other,
        server_core_steal=steal,
        client_core_other=client_other,
        client_cpu=client_cpu,
        client_procs=client_procs,
        workers=workers,
        supervisor_cpu=figures.supervisor_cpu if figures else None,
        worker_cpu=figures.cpu if figures else (),
        worker_conns=figures.conns if figures else (),
        worker_cpu_us_per_turn=figures.cpu_us_per_turn if figures else (),
        redis_cpu=redis_cpu,
        redis_cpu_us_per_turn=(
            None if redis is None or redis.cpu_s is None else per_turn_of(redis.cpu_s * 1e6)
        ),
        redis_cmds_per_turn=None if redis is None else per_turn_of(redis.commands),
        redis_round_trips_per_turn=None if redis is None else per_turn_of(redis.round_trips),
        redis_calls=redis.calls if redis is not None else {},
    )


def measure(
    procs: ProcessSet,
    spec: ServerSpec,
    cell: Cell,
    round_no: int,
    plan: Plan,
    topo: Topology,
    out: Path,
    progress: Progress,
    info: dict[str, dict[str, Any]],
    extra_flags: tuple[str, ...] = (),
    redis: BenchRedis | None = None,
) -> Measurement:
    """One server at one cell (users, think): start it, load it, stop it (and its workers).

    A server of several workers runs on every core of the run (``topo.all_cores``), the
    clients' too; on the redis store, redis-server is pinned where the server is and the
    server gets a fresh key prefix (every key is flushed after it stops).
    """
    users, think_ms = cell
    secret = secrets.token_hex(32)
    use_redis = redis if spec.store == "redis" else None
    if spec.store == "redis" and use_redis is None:
        return Measurement(
            spec.name, users, round_no, "unavailable: no redis-server", think_ms=think_ms
        )
    opts = ServerOptions(
        secret=secret,
        agent_delay_ms=plan.agent_delay_ms,
        nofile=users + 1024,
        extra_enclave_flags=extra_flags,
        redis_url=use_redis.next_url() if use_redis is not None else None,
    )
    cores = topo.server_cores if spec.workers == 1 else topo.all_cores
    if use_redis is not None:
        info.setdefault(spec.name, {})["redis_pinned"] = use_redis.pin(
            set(cores) if cores else None
        )
    log_dir = out / "logs" / f"r{round_no}-{users}-think{think_ms:g}-{spec.name}"
    try:
        server = start_server(procs, spec, opts, cores=cores, log_path=log_dir / "server.log")
    except ServerUnavailable as exc:
        info.setdefault(spec.name, {})["unavailable"] = str(exc)
        return Measurement(spec.name, users, round_no, f"unavailable: {exc}", think_ms=think_ms)
    info.setdefault(spec.name, {}).update(server.info)
    tree = list(read_tree(server.pid))
    try:
        load = _load_config(plan, server.port, secret, cell)
        result, probe = drive(
            procs,
            server,
            load,
            mode="turns",
            plan_loop=plan.loop,
            client_procs=plan.client_procs,
            topo=topo,
            log_dir=log_dir,
            progress=progress,
            redis=use_redis,
        )
    except ChildError as exc:
        return Measurement(spec.name, users, round_no, f"failed: {exc}", think_ms=think_ms)
    finally:
        tree = list(dict.fromkeys([*tree, *read_tree(server.pid)]))
        procs.stop(server.proc, timeout_s=15.0 if spec.workers > 1 else 5.0)
        reap(tree[1:])
        server.discard_store()
        if use_redis is not None:
            with contextlib.suppress(OSError, RedisError):
                use_redis.flush()
    return to_measurement(
        spec,
        users,
        round_no,
        result,
        probe,
        think_ms=think_ms,
        client_cores=topo.client_core_count,
        client_procs=plan.client_procs,
        server_core=topo.server_cores[0] if topo.server_cores else None,
        client_core_ids=topo.client_cores,
        shared_cores=topo.all_cores if spec.workers > 1 else None,
        workers=spec.workers,
    )


def reap(pids: Sequence[int], timeout_s: float = 5.0) -> list[int]:
    """Wait for the workers of a stopped supervisor (they have a process group of their
    own, so stopping the supervisor's does not reach them; it forwards its SIGTERM); SIGKILL
    those still there after ``timeout_s``. Returns the pids that had to be killed."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if _running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _running(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def _think_line(plan: dict[str, Any]) -> str:
    thinks = " and ".join(f"{t:g}" for t in plan["think_ms"])
    text = f"think {thinks} ms (±50 %)"
    if len(plan["think_ms"]) > 1:
        text += " at every user count"
    crossed = {(u, t) for u in plan["users"] for t in plan["think_ms"]}
    for users, think in plan["extra_cells"]:
        if (users, think) not in crossed:
            text += f", plus think {think:g} ms at {users:,} users"
    return text


def _agent_line(plan: dict[str, Any]) -> str:
    if plan.get("agent") == "llm":
        return (
            f"agent openai streaming {plan['llm_tokens']} words from the mock model server, "
            f"{plan['llm_token_delay_ms']:g} ms between chunks"
        )
    return f"agent delay {plan['agent_delay_ms']:g} ms x 4 steps"


def start_mock_llm(
    procs: ProcessSet, plan: Plan, cores: Sequence[int] | None, log_path: Path
) -> str:
    """Start the mock model server (on the client cores: the server's CPU stays its own);
    return its base URL once it listens."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = python_argv(
        "-m",
        "app.testing._mock_llm",
        "--port",
        str(port),
        "--tokens",
        str(plan.llm_tokens),
        "--token-delay-ms",
        f"{plan.llm_token_delay_ms:g}",
    )
    with log_path.open("wb") as log:
        proc = procs.start(argv, cores=cores or None, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            procs.stop(proc)
            raise ServerUnavailable(f"the mock model server did not start (see {log_path})")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1"


def llm_flags(base_url: str, users: int) -> tuple[str, ...]:
    """The server's flags for ``--agent llm``: one connection per user, no tools."""
    return (
        "--agent",
        "openai",
        "--llm-base-url",
        base_url,
        "--llm-model",
        "mock-model",
        "--llm-tools=",
        "--llm-max-connections",
        str(users),
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def rotated(items: Sequence[ServerSpec], by: int) -> list[ServerSpec]:
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def _one_line(m: Measurement) -> str:
    where = f"{m.server:>13} {m.users:>6,} users, think {m.think_ms:>3g} ms"
    if not m.verdict.startswith(("ok", "INVALID")):
        return f"{where}: {m.verdict}"
    p99 = f"{m.turn.p99:7.1f} ms" if m.turn else "      -"
    cpu = f"{m.server_cpu:4.0%}" if m.server_cpu is not None else "  - "
    flag = "" if m.valid else f"  {m.verdict}"
    errors = ", ".join(f"{k} {v}" for k, v in m.errors.items()) or "0"
    return (
        f"{where}: {m.turns_per_s:8,.0f} turns/s  p99 {p99}"
        f"  server CPU {cpu}  client CPU {m.client_cpu:4.0%}"
        f"  errors {errors}  violations {m.violations}{flag}"
    )


def run_benchmark(
    plan: Plan,
    out: Path,
    *,
    progress: Progress | None = None,
    argv: Sequence[str] = (),
    on_measurement: Callable[[Measurement], None] | None = None,
) -> dict[str, Any]:
    """Run ``plan``; write results.json, results.md and the charts into ``out``."""
    progress = progress or Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    topo = topology(plan.server_core)
    if topo.client_cores:
        os.sched_setaffinity(0, set(topo.client_cores))
    nofile = raise_nofile()
    info: dict[str, dict[str, Any]] = {s.name: {"label": s.label} for s in plan.servers}
    for spec in plan.servers:
        info[spec.name]["description"] = spec.description
    measurements: list[Measurement] = []
    started = time.time()
    cells = plan.cells()
    total = len(cells) * len(plan.servers) * plan.rounds
    done = 0
    with ProcessSet() as procs, contextlib.ExitStack() as stack:
        redis: BenchRedis | None = None
        if any(s.ours and s.store == "redis" for s in plan.servers):
            try:
                redis = stack.enter_context(bench_redis())
            except (FileNotFoundError, RuntimeError) as exc:
                progress.log(f"bench: the redis store is unavailable: {exc}")
            else:
                redis.pin(set(topo.server_cores) if topo.server_cores else None)
        extra_flags: tuple[str, ...] = ()
        if plan.agent == "llm":
            url = start_mock_llm(procs, plan, topo.client_cores, out / "logs" / "mock-llm.log")
            extra_flags = llm_flags(url, max(users for users, _ in cells))
        for round_no in range(1, plan.rounds + 1):
            for cell in cells:
                for spec in rotated(plan.servers, round_no - 1):
                    done += 1
                    progress.stage(
                        f"[{done}/{total}] round {round_no}/{plan.rounds} "
                        f"{spec.name} x {cell[0]:,} users, think {cell[1]:g} ms:"
                    )
                    m = measure(
                        procs,
                        spec,
                        cell,
                        round_no,
                        plan,
                        topo,
                        out,
                        progress,
                        info,
                        extra_flags,
                        redis,
                    )
                    measurements.append(m)
                    progress.log(_one_line(m))
                    if on_measurement is not None:
                        on_measurement(m)
    progress.clear()
    rows = rows_from(measurements, order=[s.name for s in plan.servers] or ORDER)
    targets = evaluate_targets(rows, agent_delay_ms=plan.agent_delay_ms)
    labels = {s.name: s.label for s in plan.servers}
    results = {
        "kind": "run",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "command": " ".join(argv),
        "plan": plan.as_dict(),
        "machine": machine_info(),
        "topology": attrs.asdict(topo),
        "harness": {"python": sys.version.split()[0], "nofile": list(nofile)},
        "servers": info,
        "measurements": [m.as_dict() for m in measurements],
        "rows": [r.as_dict() for r in rows],
        "targets": [t.as_dict() for t in targets],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    charts = write_charts(rows, out, labels)
    markdown = render_report(results, rows, targets, labels, charts)
    (out / "results.md").write_text(markdown)
    results["markdown"] = markdown
    return results


def render_report(
    results: dict[str, Any],
    rows: Sequence[Row],
    targets: Sequence[Target],
    labels: dict[str, str],
    charts: Sequence[Path],
) -> str:
    plan = results["plan"]
    machine = results["machine"]
    lines = [
        f"# trio-enclave benchmark ({'quick' if plan['quick'] else 'full'} run)",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {machine['cpu_model']}, {machine['nproc']} CPU(s), "
        f"{machine['mem_total_gib']} GiB, {machine['kernel']}",
        f"- {results['topology']['note']}",
        f"- load: {_think_line(plan)}, {_agent_line(plan)}, "
        f"window {plan['duration_s']:g} s, {plan['rounds']} round(s), "
        f"{plan['client_procs']} client process(es); medians over valid rounds",
        "",
        render_markdown(rows, labels),
        render_targets(targets),
    ]
    unavailable = {
        name: i["unavailable"] for name, i in results["servers"].items() if "unavailable" in i
    }
    for name, why in unavailable.items():
        lines.append(f"- {name}: unavailable — {why}")
    if charts:
        lines.append("")
        lines.extend(f"![{p.stem}]({p.name})" for p in charts)
    return "\n".join(lines) + "\n"
