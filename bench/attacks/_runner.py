"""``python -m bench attacks``: each attack in turn while well-behaved users chat.

For each transport: a fresh server (pinned to the server core, its default rate
limits, ``--open-timeout-s``/``--send-timeout-s`` from the plan), ``users`` users of
the bench load generator (:mod:`bench.attacks._users`, on the client core) chatting
the whole time, and one window per stretch of the run: a no-attack *baseline*, one
window per attack (an attacker process, :mod:`bench.attacks._attackers`, started in the gap
before its window), and a *recovery* window after the last one. Every turn is
stamped with its send time, so each window's p99 comes from the same run as the
baseline. The server's RSS, fds and CPU are sampled from ``/proc`` throughout.
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
    Topology,
    machine_info,
    override,
    raise_nofile,
    read_fds,
    read_sample,
    results_dir,
    run_checked,
    start_server,
    topology,
)
from ..load import LoadConfig
from ._attackers import ATTACKS, AttackConfig
from ._report import Window, expectation, judge_transport, render_markdown, window_stats

__all__ = ["INTENSITY", "AttackPlan", "add_parser", "main", "quick_plan", "run_attacks"]

#: Per attack: (connections, what they amount to).
INTENSITY: dict[str, tuple[int, str]] = {
    "flood": (8, "8 connections sending as fast as they can"),
    "slowloris": (500, "500 connections trickling the opening request"),
    "oversized": (8, "8 connections sending 65 KiB frames"),
    "slow_reader": (20, "20 connections sending 30 KB turns, never reading"),
    "churn": (32, "connect/ready/close, up to {rate:g}/s"),
}


@attrs.frozen
class AttackPlan:
    transports: tuple[str, ...] = ("lean",)
    attacks: tuple[str, ...] = ATTACKS
    users: int = 1000
    think_ms: float = 3000.0
    agent_delay_ms: float = 2.0
    window_s: float = 20.0
    gap_s: float = 5.0
    warmup_s: float = 10.0
    rate_per_s: float = 20.0
    rate_burst: int = 40
    connect_rate_per_s: float = 1.0
    connect_burst: int = 10
    abuse_cooldown_s: float = 10.0
    open_timeout_s: float = 5.0
    send_timeout_s: float = 5.0
    churn_rate: float = 300.0
    scale: float = 1.0  # multiplies each attack's connection count
    ratio_limit: float = 2.0
    sample_every_s: float = 0.5
    server_core: int | None = 0
    quick: bool = False
    seed: str = "attacks"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def connections(self, kind: str) -> int:
        return max(1, round(INTENSITY[kind][0] * self.scale))

    def intensity(self, kind: str) -> str:
        n = self.connections(kind)
        text = INTENSITY[kind][1].format(rate=self.churn_rate)
        return text.replace(str(INTENSITY[kind][0]), f"{n:,}", 1)


def quick_plan(**changes: Any) -> AttackPlan:
    """``--quick``: 200 users, 6 s windows, a fifth of the attackers (about a minute)."""
    base = AttackPlan(
        users=200,
        window_s=6.0,
        gap_s=2.0,
        warmup_s=3.0,
        open_timeout_s=2.0,
        send_timeout_s=2.0,
        churn_rate=100.0,
        scale=0.2,
        quick=True,
    )
    return attrs.evolve(base, **changes)


def _server_flags(plan: AttackPlan) -> tuple[str, ...]:
    return (
        "--rate-per-s", f"{plan.rate_per_s:g}", "--rate-burst", str(plan.rate_burst),
        "--connect-rate-per-s", f"{plan.connect_rate_per_s:g}",
        "--connect-burst", str(plan.connect_burst),
        "--abuse-cooldown-s", f"{plan.abuse_cooldown_s:g}",
        "--open-timeout-s", f"{plan.open_timeout_s:g}",
        "--send-timeout-s", f"{plan.send_timeout_s:g}",
    )  # fmt: skip


class _Sampler:
    """The server's /proc figures every ``every_s``, kept with their monotonic time."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid, self.every_s = pid, every_s
        self.rows: list[tuple[float, float, int, int]] = []  # (t, cpu s, rss KiB, fds)
        self._next = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            sample = read_sample(self.pid)
            self.rows.append((now, sample.cpu_s, sample.rss_bytes // 1024, read_fds(self.pid)))
        except (OSError, ValueError):
            pass

    def over(self, window: Window) -> dict[str, Any]:
        rows = [r for r in self.rows if window.start <= r[0] <= window.end]
        if len(rows) < 2:
            return {"server_cpu": None, "rss_max_kib": None, "fds_max": None}
        cpu = (rows[-1][1] - rows[0][1]) / max(rows[-1][0] - rows[0][0], 1e-9)
        return {
            "server_cpu": round(cpu, 3),
            "rss_max_kib": max(r[2] for r in rows),
            "fds_max": max(r[3] for r in rows),
        }


def _pump(child: Child, sampler: _Sampler, until: float, others: Sequence[Child] = ()) -> None:
    while time.monotonic() < until:
        sampler.tick()
        child.pump(min(until - time.monotonic(), sampler.every_s / 2))
        for other in others:
            other.pump(0)


def run_transport(
    plan: AttackPlan, transport: str, topo: Topology, out: Path, progress: Progress
) -> dict[str, Any]:
    """One transport: server, users, the windows in turn; what was seen (unjudged)."""
    secret = secrets.token_hex(32)
    spec = SERVERS[f"enclave-{transport}"]
    logs = out / "logs" / transport
    w, gap = plan.window_s, plan.gap_s
    total = plan.warmup_s + w + len(plan.attacks) * (gap + w) + gap + w + 1.0
    run: dict[str, Any] = {"transport": transport, "windows": [], "attackers": {}}
    with ProcessSet() as procs:
        opts = ServerOptions(
            secret=secret,
            agent_delay_ms=plan.agent_delay_ms,
            extra_enclave_flags=_server_flags(plan),
            nofile=plan.users + 20_000,
        )
        try:
            server = start_server(
                procs, spec, opts, cores=topo.server_cores, log_path=logs / "server.log"
            )
        except ServerUnavailable as exc:
            return {**run, "error": f"unavailable: {exc}", "server_alive": False}
        sampler = _Sampler(server.pid, plan.sample_every_s)
        load = LoadConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            users=plan.users,
            think_s=plan.think_ms / 1000,
            duration_s=total,
            ramp_timeout_s=60.0 + plan.users / 50,
            drain_timeout_s=15.0,
            seed=plan.seed,
        )
        users_job = {"role": "users", "config": load.as_dict()}
        users = Child(
            procs, users_job, cores=topo.client_cores, log_path=logs / "users.log",
            nofile=plan.users + 1024,
        )  # fmt: skip
        windows: list[tuple[str, str, Window, dict[str, Any] | None]] = []
        try:
            progress.stage(f"attacks enclave-{transport}:")
            progress.update(f"connecting {plan.users:,} users")
            connected = users.wait_for("connected", load.ramp_timeout_s + 30)
            progress.update(f"{connected['connected']:,} connected")
            users.send("go")
            t0 = float(users.wait_for("started", 30.0)["at"])
            base = Window("baseline", t0 + plan.warmup_s, t0 + plan.warmup_s + w)
            progress.update("baseline window")
            _pump(users, sampler, base.end)
            windows.append(("baseline", "baseline", base, None))
            start = base.end + gap
            for kind in plan.attacks:
                progress.update(f"{kind} ({plan.intensity(kind)})")
                config = AttackConfig(
                    host="127.0.0.1", port=server.port, secret=secret, kind=kind,
                    start_at=start, end_at=start + w, connections=plan.connections(kind),
                    rate=plan.churn_rate,
                )  # fmt: skip
                job: dict[str, Any] = {"role": "attack", "config": config.as_dict()}
                job["background"] = True
                with Child(
                    procs, job, cores=topo.client_cores, log_path=logs / f"{kind}.log",
                    nofile=65_536,
                ) as attacker:  # fmt: skip
                    attacker.wait_for("ready", 30.0)
                    _pump(attacker, sampler, config.end_at, (users,))
                    began = float(attacker.wait_for("attacking", 5.0)["at"])
                    done = attacker.wait_for("result", 30.0)
                    window = Window(kind, began, min(config.end_at, float(done["at"])))
                    windows.append((kind, "attack", window, done["stats"]))
                start += w + gap
            after = Window("recovery", start, start + w)
            progress.update("recovery window")
            _pump(users, sampler, after.end)
            windows.append(("recovery", "recovery", after, None))
            final = users.wait_for("result", total + load.drain_timeout_s + 120)
            run["users"] = {k: final[k] for k in ("result", "timed", "failed", "lost")}
        except ChildError as exc:
            run["error"] = str(exc)
        finally:
            users.stop()
        run["server_alive"] = server.alive()
        procs.stop(server.proc)
    progress.clear()
    timed = run.get("users", {}).get("timed", [])
    failed = run.get("users", {}).get("failed", [])
    lost = run.get("users", {}).get("lost", [])
    for name, kind, window, stats in windows:
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "window": window.as_dict(),
            "stats": window_stats(window, timed, failed, lost),
            **sampler.over(window),
        }
        if stats is not None:
            entry["attacker"] = stats
            entry["intensity"] = plan.intensity(name)
            entry["server"] = expectation(
                name, stats, transport=transport, open_timeout_s=plan.open_timeout_s,
                send_timeout_s=plan.send_timeout_s,
            )  # fmt: skip
        run["windows"].append(entry)
    baseline = next((e for e in run["windows"] if e["kind"] == "baseline"), None)
    base_p99 = baseline["stats"]["p99_ms"] if baseline else None
    for entry in run["windows"]:
        p99 = entry["stats"]["p99_ms"]
        entry["ratio"] = None if not base_p99 or p99 is None else round(p99 / base_p99, 3)
    run["server_samples"] = sampler.rows
    return run


def run_attacks(
    plan: AttackPlan, out: Path, *, progress: Progress | None = None, argv: Sequence[str] = ()
) -> dict[str, Any]:
    """Run ``plan``; write results.json and results.md into ``out``."""
    progress = progress or Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    topo = topology(plan.server_core)
    raise_nofile()
    started = time.time()
    runs: dict[str, Any] = {}
    for transport in plan.transports:
        run = run_transport(plan, transport, topo, out, progress)
        run["checks"] = judge_transport(run, plan.as_dict())
        run["ok"] = all(c["ok"] for c in run["checks"])
        runs[transport] = run
        progress.log(f"enclave-{transport}: {'PASS' if run['ok'] else 'FAIL'}")
    results = _summary(plan, runs, topo, argv, started)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    markdown = render_markdown(results)
    (out / "results.md").write_text(markdown)
    results["markdown"] = markdown
    return results


def _summary(
    plan: AttackPlan, runs: dict[str, Any], topo: Topology, argv: Sequence[str], started: float
) -> dict[str, Any]:
    return {
        "kind": "attacks",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "command": " ".join(argv),
        "plan": plan.as_dict(),
        "machine": machine_info(),
        "topology": topo.note,
        "harness": {"python": sys.version.split()[0]},
        "runs": runs,
        "ok": bool(runs) and all(r["ok"] for r in runs.values()),
    }


def add_parser(sub: Any) -> None:
    """``python -m bench attacks`` (``sub``: the subparsers of ``python -m bench``)."""
    full = AttackPlan()
    p = sub.add_parser("attacks", help="each attack in turn while well-behaved users chat")
    p.add_argument("--quick", action="store_true", help="200 users, 6 s windows (about a minute)")
    p.add_argument("--users", type=int, help=f"well-behaved users (default {full.users:,})")
    p.add_argument("--transport", choices=("lean", "asgi", "both"), default="lean")
    p.add_argument("--window-s", type=float, help=f"seconds per window (default {full.window_s:g})")
    p.add_argument(
        "--attacks", help=f"comma-separated, default all: {','.join(ATTACKS)}", default=None
    )
    p.add_argument("--think-ms", type=float, help=f"users' mean think time ({full.think_ms:g})")
    p.add_argument("--scale", type=float, help="multiply every attack's connection count")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    p.add_argument("--out", type=Path, help="default bench/results/<time>-attacks")


def main(args: Any, argv: Sequence[str]) -> int:
    """Run the attacks from parsed arguments; 0 when every check passed, 1 otherwise."""
    plan = quick_plan() if args.quick else AttackPlan()
    attacks = None
    if args.attacks:
        attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            print(f"bench attacks: unknown attack(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
    changes = {
        "transports": ("lean", "asgi") if args.transport == "both" else (args.transport,),
        "users": args.users,
        "window_s": args.window_s,
        "attacks": attacks,
        "think_ms": args.think_ms,
        "scale": args.scale,
        "server_core": None if args.no_pin else plan.server_core,
    }
    plan = override(plan, changes)
    return run_checked("attacks", run_attacks, plan, results_dir(args.out, "attacks"), argv)
