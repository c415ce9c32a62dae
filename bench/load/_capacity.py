"""``python -m bench capacity``: N idle authenticated connections held with keepalive.

Per server: RSS before connecting vs with N connected (per connection), and the
server's CPU while the connections sit idle for ``hold_s`` (the server pings every
``ping_interval_s``, the clients answer). The fd soft limit is raised in the harness,
the load generators and the server (before ``exec``), and reported.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..harness import (
    ChildError,
    ProcessSet,
    Progress,
    ServerOptions,
    ServerSpec,
    ServerUnavailable,
    machine_info,
    raise_nofile,
    read_nofile,
    start_server,
    topology,
)
from ._generator import LoadConfig
from ._report import TARGET_IDLE_CPU, TARGET_KIB_PER_CONN
from ._runner import drive

__all__ = ["CapacityPlan", "capacity_verdict", "render_capacity", "run_capacity"]


@attrs.frozen
class CapacityPlan:
    connections: int
    servers: tuple[ServerSpec, ...]
    hold_s: float = 10.0
    ping_interval_s: float | None = None  # None: the server's default keepalive
    client_procs: int = 1
    connect_concurrency: int = 64
    loop: str = "auto"
    server_core: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["servers"] = [s.name for s in self.servers]
        return out


def _one(
    procs: ProcessSet, spec: ServerSpec, plan: CapacityPlan, out: Path, progress: Progress
) -> dict[str, Any]:
    topo = topology(plan.server_core)
    secret = secrets.token_hex(32)
    nofile = plan.connections + 1024
    flags = (
        () if plan.ping_interval_s is None else ("--ping-interval-s", f"{plan.ping_interval_s:g}")
    )
    opts = ServerOptions(secret=secret, nofile=nofile, extra_enclave_flags=flags)
    log_dir = out / "logs" / f"capacity-{spec.name}"
    row: dict[str, Any] = {"server": spec.name, "requested": plan.connections}
    try:
        server = start_server(
            procs, spec, opts, cores=topo.server_cores, log_path=log_dir / "server.log"
        )
    except ServerUnavailable as exc:
        row["verdict"] = f"unavailable: {exc}"
        return row
    row["server_nofile"] = read_nofile(server.pid)
    row["server_info"] = server.info
    load = LoadConfig(
        host="127.0.0.1",
        port=server.port,
        secret=secret,
        users=plan.connections,
        think_s=0.0,
        duration_s=plan.hold_s,
        connect_concurrency=plan.connect_concurrency,
        ramp_timeout_s=60.0 + plan.connections / 100,
        close_timeout_s=15.0,
    )
    try:
        result, probe = drive(
            procs,
            server,
            load,
            mode="hold",
            plan_loop=plan.loop,
            client_procs=plan.client_procs,
            topo=topo,
            log_dir=log_dir,
            progress=progress,
        )
    except ChildError as exc:
        row["verdict"] = f"failed: {exc}"
        return row
    finally:
        procs.stop(server.proc)
    row["connected"] = result.connected
    row["errors"] = dict(result.errors)
    row["close_codes"] = dict(result.close_codes)
    row["violations"] = result.violations
    row["rss_idle"] = probe.idle.rss_bytes if probe.idle else None
    row["rss_connected"] = probe.connected.rss_bytes if probe.connected else None
    row["rss_after_hold"] = probe.end.rss_bytes if probe.end else None
    if probe.idle and probe.connected and result.connected:
        row["rss_per_conn"] = (probe.connected.rss_bytes - probe.idle.rss_bytes) / result.connected
    if probe.start and probe.end and probe.window_s > 0:
        row["idle_cpu"] = (probe.end.cpu_s - probe.start.cpu_s) / probe.window_s
    row["hold_s"] = round(probe.window_s, 2)
    row["client_cpu"] = (result.cpu_s + probe.harness_cpu_s) / max(probe.window_s, 1e-9)
    held = result.connected - int(result.errors.get("dropped", 0))
    row["held"] = held
    row["verdict"] = capacity_verdict(row, plan)
    return row


def capacity_verdict(row: Mapping[str, Any], plan: CapacityPlan) -> str:
    """``meets targets``, or ``misses: ...`` with each target a measured row misses."""
    reasons = []
    held = row.get("held", 0)
    if held < plan.connections:
        reasons.append(f"held {held:,}/{plan.connections:,}")
    kib = row.get("rss_per_conn")
    if kib is not None and kib / 1024 > TARGET_KIB_PER_CONN:
        reasons.append(f"{kib / 1024:.1f} KiB/conn > {TARGET_KIB_PER_CONN:g}")
    cpu = row.get("idle_cpu")
    # The target is set at the server's default keepalive: a shorter interval costs more.
    if cpu is not None and plan.ping_interval_s is None and cpu >= TARGET_IDLE_CPU:
        reasons.append(f"idle CPU {cpu:.1%} >= {TARGET_IDLE_CPU:.0%}")
    return "meets targets" if not reasons else "misses: " + "; ".join(reasons)


def _kib(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 1024:,.1f}"


def _mib(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 1048576:,.1f}"


def render_capacity(results: dict[str, Any]) -> str:
    plan = results["plan"]
    ping = plan["ping_interval_s"]
    keepalive = "the server's default" if ping is None else f"every {ping:g} s"
    lines = [
        f"Capacity: {plan['connections']:,} idle authenticated connections per server, held "
        f"{plan['hold_s']:g} s, server keepalive pings {keepalive}; "
        f"harness `ulimit -n` {results['harness_nofile'][0]} (hard {results['harness_nofile'][1]})",
        "",
        "| server | held | RSS idle MiB | RSS connected MiB | RSS/conn KiB | idle CPU "
        "| server ulimit -n | errors | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for row in results["rows"]:
        nofile = row.get("server_nofile")
        cpu = row.get("idle_cpu")
        errors = ", ".join(f"{k} {v}" for k, v in (row.get("errors") or {}).items()) or "0"
        lines.append(
            f"| {row['server']} | {row.get('held', 0):,} | {_mib(row.get('rss_idle'))} "
            f"| {_mib(row.get('rss_connected'))} | {_kib(row.get('rss_per_conn'))} "
            f"| {'-' if cpu is None else f'{cpu:.1%}'} | {nofile[0] if nofile else '-'} "
            f"| {errors} | {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def run_capacity(
    plan: CapacityPlan, out: Path, *, progress: Progress | None = None, argv: Sequence[str] = ()
) -> dict[str, Any]:
    progress = progress or Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    topo = topology(plan.server_core)
    if topo.client_cores:
        os.sched_setaffinity(0, set(topo.client_cores))
    nofile = raise_nofile(plan.connections + 1024)
    rows = []
    started = time.time()
    with ProcessSet() as procs:
        for spec in plan.servers:
            progress.stage(f"capacity {spec.name} x {plan.connections:,}:")
            row = _one(procs, spec, plan, out, progress)
            rows.append(row)
            progress.log(
                f"{spec.name:>13}: held {row.get('held', 0):,}, "
                f"{_kib(row.get('rss_per_conn'))} KiB/conn, "
                f"idle CPU {row.get('idle_cpu', float('nan')):.1%} — {row['verdict']}"
            )
    progress.clear()
    results: dict[str, Any] = {
        "kind": "capacity",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "command": " ".join(argv),
        "plan": plan.as_dict(),
        "machine": machine_info(),
        "topology": attrs.asdict(topo),
        "harness_nofile": list(nofile),
        "rows": rows,
    }
    (out / "capacity.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    markdown = render_capacity(results)
    (out / "capacity.md").write_text(markdown)
    results["markdown"] = markdown
    return results
