"""``python -m bench``: ``run``, ``capacity``, ``soak``, ``attacks``, ``resume``,
``instructions`` (and ``child``, used by the harness)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .attacks import add_parser as add_attacks_parser
from .attacks import main as attacks_main
from .harness import (
    ORDER,
    STORES,
    Progress,
    ServerSpec,
    parse_servers,
    results_dir,
    sigterm_as_interrupt,
    with_stores,
    with_workers,
)
from .instructions import add_parser as add_instructions_parser
from .instructions import main as instructions_main
from .load import CapacityPlan, Plan, run_benchmark, run_capacity
from .soak import add_parser as add_soak_parser
from .soak import main as soak_main
from .threads import add_parser as add_resume_parser
from .threads import main as resume_main

__all__ = ["main"]

FULL_USERS = (100, 1000, 5000)
QUICK_USERS = (20, 200)
THINK_MS = (100.0,)
#: The full default run adds this (users, think_ms) cell: capacity without think time,
#: where the hot-path targets are defined, at one user count only (not the whole run twice).
CAPACITY_CELL = (1000, 0.0)


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _think_times(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError("think times must be finite and >= 0")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("user counts must be >= 1")
    return values


def _stores(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [v for v in values if v not in STORES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated stores among {', '.join(STORES)}, got {text!r}"
        )
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="concurrent-user load, every server side by side")
    run.add_argument(
        "--quick", action="store_true", help="small user counts, think 100 only, short, one round"
    )
    run.add_argument(
        "--users",
        type=_ints,
        help=f"user counts (default {_csv(FULL_USERS)}; quick {_csv(QUICK_USERS)})",
    )
    run.add_argument(
        "--servers", default="all", help=f"comma-separated, or 'all': {','.join(ORDER)}"
    )
    run.add_argument(
        "--think-ms",
        type=_think_times,
        help="mean think times between turns, comma-separated, each at every user count like "
        "--users (e.g. 100,0). Default: 100, plus think 0 at 1,000 users only (capacity "
        "without think time) when neither --users nor --think-ms is given; --quick: 100 only",
    )
    run.add_argument(
        "--agent-delay-ms",
        type=float,
        default=2.0,
        help="agent delay per step, 4 steps a turn (default 2)",
    )
    run.add_argument(
        "--agent",
        choices=("echo", "llm"),
        default="echo",
        help="echo: the agent sleeps --agent-delay-ms per step; llm: --agent openai streaming "
        "from a local mock model server (waits are network I/O; enclave servers only)",
    )
    run.add_argument(
        "--llm-tokens", type=int, default=8, help="--agent llm: words per answer (default 8)"
    )
    run.add_argument(
        "--llm-token-delay-ms",
        type=float,
        default=5.0,
        help="--agent llm: time between the mock's chunks (default 5)",
    )
    run.add_argument(
        "--duration-s",
        type=float,
        help="measured window per server and user count (default 6; quick 3)",
    )
    run.add_argument(
        "--warmup-s",
        type=float,
        help="unmeasured turns before each window (default 2; quick 1)",
    )
    run.add_argument(
        "--rounds", type=int, help="interleaved rounds; medians over them (default 2; quick 1)"
    )
    run.add_argument(
        "--client-procs", type=int, default=1, help="load-generator processes (default 1)"
    )
    run.add_argument(
        "--connect-concurrency", type=int, default=64, help="handshakes in flight per process"
    )
    run.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="client event loop"
    )
    run.add_argument("--no-pin", action="store_true", help="do not pin server and clients to cores")
    run.add_argument(
        "--stores",
        type=_stores,
        default=("memory",),
        help="thread stores of enclave, side by side: memory, sqlite, redis, comma-separated "
        "(default memory; sqlite: a fresh file per server start; redis: the run's own "
        "redis-server, pinned with the server, a fresh key prefix per server start)",
    )
    run.add_argument(
        "--workers",
        type=_ints,
        default=(1,),
        help="enclave's serve --workers N, side by side: e.g. 2 or 1,2 (default 1; N > 1 runs "
        "the server and Redis on every core, the clients' too; not with sqlite)",
    )
    run.add_argument("--seed", default="bench", help="seed of the users' canaries")
    run.add_argument("--out", type=Path, help="output directory (default bench/results/<time>)")

    cap = sub.add_parser("capacity", help="N idle authenticated connections with keepalive")
    cap.add_argument("--connections", type=int, default=10_000)
    cap.add_argument("--servers", default="enclave-asgi,enclave-lean,bare-trio")
    cap.add_argument("--hold-s", type=float, default=10.0, help="idle time measured (default 10)")
    cap.add_argument(
        "--ping-interval-s",
        type=float,
        default=None,
        help="enclave's keepalive ping interval (default: the server's, 20 s)",
    )
    cap.add_argument("--client-procs", type=int, default=1)
    cap.add_argument("--connect-concurrency", type=int, default=64)
    cap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    cap.add_argument("--no-pin", action="store_true")
    cap.add_argument("--out", type=Path)

    add_soak_parser(sub)
    add_attacks_parser(sub)
    add_resume_parser(sub)
    add_instructions_parser(sub)
    sub.add_parser("child", help=argparse.SUPPRESS)
    return parser


def run_plan(args: argparse.Namespace, specs: Sequence[ServerSpec]) -> Plan:
    """``bench run``'s plan from its arguments and the servers they name."""
    default_load = args.users is None and args.think_ms is None
    return Plan(
        users=args.users or (QUICK_USERS if args.quick else FULL_USERS),
        servers=tuple(specs),
        think_ms=args.think_ms or THINK_MS,
        # Only the full default run: a quick run stays quick, and a run given its own user
        # counts or think times measures exactly those.
        extra_cells=(CAPACITY_CELL,) if default_load and not args.quick else (),
        agent_delay_ms=args.agent_delay_ms,
        duration_s=args.duration_s or (3.0 if args.quick else 6.0),
        warmup_s=(1.0 if args.quick else 2.0) if args.warmup_s is None else args.warmup_s,
        rounds=args.rounds or (1 if args.quick else 2),
        client_procs=args.client_procs,
        connect_concurrency=args.connect_concurrency,
        loop=args.loop,
        server_core=None if args.no_pin else 0,
        seed=args.seed,
        quick=args.quick,
        agent=args.agent,
        llm_tokens=args.llm_tokens,
        llm_token_delay_ms=args.llm_token_delay_ms,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    if args.command == "child":
        from .harness._child import main as child_main

        return child_main()
    if args.command == "soak":
        return soak_main(args, shown)
    if args.command == "attacks":
        return attacks_main(args, shown)
    if args.command == "resume":
        return resume_main(args, shown)
    if args.command == "instructions":
        return instructions_main(args, shown)
    sigterm_as_interrupt()
    try:
        specs = tuple(parse_servers(args.servers))
        if args.command == "run":
            specs = tuple(with_stores(specs, args.stores))
            many, skipped = with_workers(specs, args.workers)
            specs = tuple(many)
            if skipped:
                print(
                    f"bench: left out {', '.join(skipped)}: one SQLite file cannot be shared "
                    "by several workers",
                    file=sys.stderr,
                )
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "agent", "echo") == "llm":
        peers = [s.name for s in specs if not s.ours]
        if args.servers.strip() == "all":
            specs = tuple(s for s in specs if s.ours)
        elif peers:
            print(
                f"bench: --agent llm runs enclave servers only, not {', '.join(peers)}",
                file=sys.stderr,
            )
            return 2
    progress = Progress()
    try:
        if args.command == "capacity":
            out = results_dir(args.out, "capacity")
            cap_plan = CapacityPlan(
                connections=args.connections,
                servers=specs,
                hold_s=args.hold_s,
                ping_interval_s=args.ping_interval_s,
                client_procs=args.client_procs,
                connect_concurrency=args.connect_concurrency,
                loop=args.loop,
                server_core=None if args.no_pin else 0,
            )
            results = run_capacity(cap_plan, out, progress=progress, argv=shown)
        else:
            out = results_dir(args.out, "quick" if args.quick else "full")
            results = run_benchmark(run_plan(args, specs), out, progress=progress, argv=shown)
    except KeyboardInterrupt:
        progress.log("bench: interrupted; every server and client process was stopped")
        return 130
    print(results["markdown"])
    print(f"results: {out}/", file=sys.stderr)
    return 0
