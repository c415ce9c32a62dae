"""``python -m bench resume``: resume latency of every thread store, side by side.

For each store, a fresh ``enclave-lean`` on the server core (``--store memory`` or
``--store sqlite:PATH``, a new file) and, in this process on the client core(s), the
users of :mod:`._client`: ``turns`` turns each in its own thread, then all drop and
reconnect at once and ``resume``; the resume latency (``resume`` sent to ``resumed``
read) is summarized per store.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..harness import (
    SERVERS,
    ProcessSet,
    Progress,
    ServerOptions,
    ServerUnavailable,
    machine_info,
    override,
    raise_nofile,
    results_dir,
    run_checked,
    start_server,
    summarize,
    topology,
    with_stores,
)
from ._client import ResumeResult, UsersConfig, measure_resume

__all__ = ["RESUME_STORES", "ResumePlan", "add_parser", "main", "render_markdown", "run_resume"]

#: The stores ``resume`` measures (it starts no redis-server: the redis store is ``run``'s).
RESUME_STORES: tuple[str, ...] = ("memory", "sqlite")


@attrs.frozen
class ResumePlan:
    users: int = 1000
    turns: int = 3
    replay: int = 6
    stores: tuple[str, ...] = RESUME_STORES
    agent_delay_ms: float = 0.0
    connect_concurrency: int = 64
    server_core: int | None = 0


def _measure(
    procs: ProcessSet, store: str, plan: ResumePlan, out: Path, cores: Sequence[int] | None
) -> dict[str, Any]:
    spec = with_stores([SERVERS["enclave-lean"]], (store,))[0]
    secret = secrets.token_hex(32)
    opts = ServerOptions(
        secret=secret, agent_delay_ms=plan.agent_delay_ms, nofile=plan.users + 1024
    )
    log_path = out / "logs" / spec.name / "server.log"
    try:
        server = start_server(procs, spec, opts, cores=cores, log_path=log_path)
    except ServerUnavailable as exc:
        return {"store": store, "server": spec.name, "unavailable": str(exc)}
    try:
        config = UsersConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            users=plan.users,
            turns=plan.turns,
            replay=plan.replay,
            connect_concurrency=plan.connect_concurrency,
        )
        result: ResumeResult = asyncio.run(measure_resume(config))
    finally:
        procs.stop(server.proc)
        server.discard_store()
    latency = summarize(result.latency_ms)
    return {
        "store": store,
        "server": spec.name,
        "result": result.as_dict() | {"latency_ms": None},
        "latency": None if latency is None else latency.as_dict(),
        "turns_per_s": plan.users * plan.turns / result.turns_s if result.turns_s else None,
    }


def render_markdown(plan: ResumePlan, rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{plan.users:,} users, {plan.turns} turns each in its own thread, all drop and "
        f"reconnect at once, each resumes {plan.replay} events back",
        "",
        "| store | resumed | p50 ms | p99 ms | max ms | events replayed | turns/s (setup) "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"| {row['store']} | unavailable: {row['unavailable']} |||||||")
            continue
        result, latency = row["result"], row["latency"] or {}
        errors = ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items())) or "0"
        tps = row["turns_per_s"]
        lines.append(
            f"| {row['store']} | {result['resumed']:,}/{result['users']:,} "
            f"| {latency.get('p50', float('nan')):.1f} | {latency.get('p99', float('nan')):.1f} "
            f"| {latency.get('max', float('nan')):.1f} | {result['replayed']:,} "
            f"| {'-' if tps is None else f'{tps:,.0f}'} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def run_resume(
    plan: ResumePlan, out: Path, *, progress: Progress | None = None, argv: Sequence[str] = ()
) -> dict[str, Any]:
    """Run ``plan``; write results.json and results.md into ``out``. ``ok``: every user
    of every store resumed, with no error."""
    progress = progress or Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    topo = topology(plan.server_core)
    if topo.client_cores:
        os.sched_setaffinity(0, set(topo.client_cores))
    raise_nofile()
    started = time.time()
    rows: list[dict[str, Any]] = []
    with ProcessSet() as procs:
        for store in plan.stores:
            progress.stage(f"resume: {store} x {plan.users:,} users")
            rows.append(_measure(procs, store, plan, out, topo.server_cores))
            progress.log(render_markdown(plan, rows[-1:]).splitlines()[-1])
    progress.clear()
    markdown = f"# trio-enclave resume latency\n\n- command: `{' '.join(argv)}`\n\n" + (
        render_markdown(plan, rows)
    )
    ok = all(
        "result" in row and row["result"]["resumed"] == plan.users and not row["result"]["errors"]
        for row in rows
    )
    results = {
        "kind": "resume",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "command": " ".join(argv),
        "plan": attrs.asdict(plan),
        "machine": machine_info(),
        "topology": attrs.asdict(topo),
        "harness": {"python": sys.version.split()[0]},
        "rows": rows,
        "ok": ok,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown)
    results["markdown"] = markdown
    return results


def _stores(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(v not in RESUME_STORES for v in values):
        raise ValueError(f"expected comma-separated stores among {', '.join(RESUME_STORES)}")
    return values


def add_parser(sub: Any) -> None:
    """``python -m bench resume`` (``sub``: the subparsers of ``python -m bench``)."""
    full = ResumePlan()
    p = sub.add_parser("resume", help="resume latency after everyone reconnects at once")
    p.add_argument("--users", type=int, help=f"users, one thread each (default {full.users:,})")
    p.add_argument("--turns", type=int, help=f"turns per thread first (default {full.turns})")
    p.add_argument("--replay", type=int, help=f"events each resume replays ({full.replay})")
    p.add_argument(
        "--stores", type=_stores, help=f"thread stores, side by side ({','.join(full.stores)})"
    )
    p.add_argument("--agent-delay-ms", type=float, help="agent delay per step (default 0)")
    p.add_argument("--connect-concurrency", type=int, help="handshakes in flight (default 64)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<time>-resume)")


def main(args: Any, argv: Sequence[str]) -> int:
    """Run from parsed arguments; 0 when every user resumed, 1 otherwise."""
    plan = override(
        ResumePlan(),
        {
            "users": args.users,
            "turns": args.turns,
            "replay": args.replay,
            "stores": args.stores,
            "agent_delay_ms": args.agent_delay_ms,
            "connect_concurrency": args.connect_concurrency,
        },
    )
    if args.no_pin:
        plan = attrs.evolve(plan, server_core=None)
    return run_checked("resume", run_resume, plan, results_dir(args.out, "resume"), argv)
