"""``python -m bench soak``: hours of traffic squeezed into minutes, watching for leaks.

One server (pinned to the server core) and one client process (:mod:`bench.soak._driver`,
on the other core) that keeps ``slots`` connections busy with turns, cancels and
drops while connections come and go. The harness samples the server's RSS
(``/proc/PID/status``) and open fds (``/proc/PID/fd``) the whole time. It fails when a
target count is not reached in the time bound, a turn lacks exactly one terminal
event, an isolation violation is seen, RSS grows after the warm-up (least-squares
slope over a limit) or the fds do not come back to the baseline once the clients
have left.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..harness import (
    SERVERS,
    Child,
    ChildError,
    ProcessSet,
    Progress,
    ServerOptions,
    ServerUnavailable,
    machine_info,
    override,
    raise_nofile,
    read_fds,
    read_rss_kib,
    results_dir,
    run_checked,
    start_server,
    topology,
)
from ._driver import SoakConfig
from ._report import Sample, judge, render_markdown, write_chart

__all__ = ["SoakPlan", "add_parser", "main", "quick_plan", "run_soak", "server_options"]


@attrs.frozen
class SoakPlan:
    """What a soak does and what it must reach (see ``docs/security.md``)."""

    transport: str = "lean"
    duration_s: float = 600.0
    # What this project's 2-core machine reaches in 10 minutes with room to spare
    # (about 480 turns/s and 57 cycles/s unloaded); see docs/security.md.
    turns: int = 200_000
    cycles: int = 20_000
    slots: int = 64
    turns_per_connection: int = 10
    cancel_p: float = 0.05
    drop_p: float = 0.02
    agent_delay_ms: float = 2.0
    # The memory thread store grows to its bound by design (at the server's default of
    # 256 MiB, about two minutes of this load) and then evicts: a small bound is reached
    # in the warm-up, so the slope after it measures leaks, and eviction runs throughout.
    history_memory_mb: float = 16.0
    warmup_s: float = 60.0
    sample_every_s: float = 2.0
    rss_slope_limit_kib_min: float = 256.0
    fd_settle_s: float = 15.0
    server_core: int | None = 0
    quick: bool = False
    seed: str = "soak"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def quick_plan(**changes: Any) -> SoakPlan:
    """The ``--quick`` soak: 15 s of load, a loose memory limit (a smoke test)."""
    base = SoakPlan(
        duration_s=15.0,
        turns=1_500,
        cycles=150,
        slots=32,
        warmup_s=5.0,
        sample_every_s=0.25,
        # 10 s of samples cannot show a slow leak; this catches a gross one.
        rss_slope_limit_kib_min=16_384.0,
        fd_settle_s=10.0,
        quick=True,
    )
    return attrs.evolve(base, **changes)


def server_options(plan: SoakPlan, secret: str) -> ServerOptions:
    """How the soak starts its server: the plan's agent delay and thread-store bound."""
    flags = ("--history-memory-mb", f"{plan.history_memory_mb:g}")
    return ServerOptions(
        secret=secret,
        agent_delay_ms=plan.agent_delay_ms,
        extra_enclave_flags=flags,
        nofile=65_536,
    )


def _sample(pid: int, t: float, progress: dict[str, Any] | None) -> Sample | None:
    try:
        rss, fds = read_rss_kib(pid), read_fds(pid)
    except (OSError, ValueError):
        return None
    p = progress or {}
    return Sample(round(t, 3), rss, fds, int(p.get("turns", 0)), int(p.get("cycles", 0)))


def run_soak(
    plan: SoakPlan, out: Path, *, progress: Progress | None = None, argv: Sequence[str] = ()
) -> dict[str, Any]:
    """Run ``plan``; write results.json, results.md and soak.png into ``out``."""
    progress = progress or Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    topo = topology(plan.server_core)
    raise_nofile()
    secret = secrets.token_hex(32)
    spec = SERVERS[f"enclave-{plan.transport}"]
    started = time.time()
    samples: list[Sample] = []
    client: dict[str, Any] = {}
    load_s = 0.0
    fd_baseline = fd_final = -1
    alive = True
    error: str | None = None
    with ProcessSet() as procs:
        opts = server_options(plan, secret)
        try:
            server = start_server(
                procs, spec, opts, cores=topo.server_cores, log_path=out / "logs" / "server.log"
            )
        except ServerUnavailable as exc:
            raise SystemExit(f"bench soak: {spec.name} unavailable: {exc}") from None
        time.sleep(0.5)
        fd_baseline = read_fds(server.pid)
        config = SoakConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            slots=plan.slots,
            duration_s=plan.duration_s,
            turns_per_connection=plan.turns_per_connection,
            cancel_p=plan.cancel_p,
            drop_p=plan.drop_p,
            seed=plan.seed,
        )
        job = {"role": "soak", "config": config.as_dict()}
        with Child(
            procs, job, cores=topo.client_cores, log_path=out / "logs" / "client.log"
        ) as child:
            try:
                child.wait_for("ready", 30.0)
                child.send("go")
                t0 = time.monotonic()
                limit = t0 + plan.duration_s + config.drain_timeout_s + 60.0
                next_sample = t0
                progress.stage(f"soak enclave-{plan.transport}:")
                while not any(line.get("event") == "result" for line in child.lines):
                    now = time.monotonic()
                    if now > limit:
                        raise ChildError("the soak client did not finish in time")
                    if not server.alive():
                        alive = False
                        break
                    if now >= next_sample:
                        got = _sample(server.pid, now - t0, child.latest.get("progress"))
                        if got is not None:
                            samples.append(got)
                            progress.update(
                                f"{now - t0:5.0f}/{plan.duration_s:g} s  {got.turns:,} turns  "
                                f"{got.cycles:,} cycles  RSS {got.rss_kib / 1024:.1f} MiB  "
                                f"fds {got.fds}"
                            )
                        next_sample += plan.sample_every_s
                    child.pump(max(0.0, min(next_sample - time.monotonic(), 0.25)))
                if alive:
                    client = child.wait_for("result", 5.0)["result"]
                load_s = float(client.get("elapsed_s", time.monotonic() - t0))
            except ChildError as exc:
                error = str(exc)
        # The clients are gone: the server must give back every fd (bounded wait).
        if alive and server.alive():
            deadline = time.monotonic() + plan.fd_settle_s
            while True:
                got = _sample(server.pid, time.monotonic() - t0, None)
                if got is not None:
                    samples.append(got)
                    fd_final = got.fds
                if fd_final <= fd_baseline or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        alive = alive and server.alive()
        procs.stop(server.proc)
    progress.clear()
    checks, figures = judge(
        plan.as_dict(),
        client,
        samples,
        load_s=load_s,
        fd_baseline=fd_baseline,
        fd_final=fd_final if fd_final >= 0 else None,
        server_alive=alive and error is None,
    )
    if error is not None:
        checks[0] = attrs.evolve(checks[0], ok=False, detail=error)
    results: dict[str, Any] = {
        "kind": "soak",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "command": " ".join(argv),
        "plan": plan.as_dict(),
        "machine": machine_info(),
        "topology": topo.note,
        "harness": {"python": sys.version.split()[0]},
        "figures": figures,
        "checks": [c.as_dict() for c in checks],
        "ok": all(c.ok for c in checks),
        "client": client,
        "samples": [s.as_dict() for s in samples],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    chart = write_chart(
        samples,
        out,
        warmup_s=plan.warmup_s,
        load_s=load_s,
        slope=figures["rss_slope_kib_min"],
    )
    markdown = render_markdown(results, chart)
    (out / "results.md").write_text(markdown)
    results["markdown"] = markdown
    return results


def add_parser(sub: Any) -> None:
    """``python -m bench soak`` (``sub``: the subparsers of ``python -m bench``)."""
    full = SoakPlan()
    p = sub.add_parser("soak", help="bounded soak: churn, turns, cancels, drops; RSS/fd leaks")
    p.add_argument("--quick", action="store_true", help="about 20 s (the test-suite variant)")
    p.add_argument("--transport", choices=("lean", "asgi"), default="lean")
    p.add_argument("--duration-s", type=float, help=f"time bound (default {full.duration_s:g})")
    p.add_argument("--turns", type=int, help=f"turns to reach (default {full.turns:,})")
    p.add_argument("--cycles", type=int, help=f"cycles to reach (default {full.cycles:,})")
    p.add_argument("--slots", type=int, help=f"connections at a time (default {full.slots})")
    p.add_argument("--warmup-s", type=float, help=f"not in the RSS slope ({full.warmup_s:g})")
    p.add_argument(
        "--rss-slope-limit",
        type=float,
        help=f"KiB/min of RSS growth that fails (default {full.rss_slope_limit_kib_min:g})",
    )
    p.add_argument(
        "--agent-delay-ms", type=float, help=f"agent delay per step ({full.agent_delay_ms:g})"
    )
    p.add_argument(
        "--history-memory-mb",
        type=float,
        help=f"the server's memory thread store bound (default {full.history_memory_mb:g})",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    p.add_argument("--out", type=Path, help="output directory (default bench/results/<time>-soak)")


def main(args: Any, argv: Sequence[str]) -> int:
    """Run the soak from parsed arguments; 0 when every check passed, 1 otherwise."""
    plan = quick_plan() if args.quick else SoakPlan()
    changes = {
        "transport": args.transport,
        "duration_s": args.duration_s,
        "turns": args.turns,
        "cycles": args.cycles,
        "slots": args.slots,
        "warmup_s": args.warmup_s,
        "rss_slope_limit_kib_min": args.rss_slope_limit,
        "agent_delay_ms": args.agent_delay_ms,
        "history_memory_mb": args.history_memory_mb,
        "server_core": None if args.no_pin else plan.server_core,
    }
    plan = override(plan, changes)
    return run_checked("soak", run_soak, plan, results_dir(args.out, "soak"), argv)
