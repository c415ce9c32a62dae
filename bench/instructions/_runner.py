"""``python -m bench instructions``: user-space instructions per turn, counted by callgrind.

A load run's CPU per turn moves with the shared machine by tens of percent from one hour
to the next; an instruction count does not. Each server runs under ``valgrind
--tool=callgrind`` twice, fresh each time: once while ``users`` users run ``turns`` turns
each (think 0, one thread per user), once while they only connect. The difference over
the turns run is what one turn costs, with start-up, handshakes and shutdown cancelled
out. It counts user space only (the kernel's share of a system call is not in it), and
under callgrind the interpreter runs about 50 times slower, so the agent's waits are
short by comparison: compare servers measured the same way, not against wall-clock CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from ..harness import (
    ProcessSet,
    Progress,
    ServerOptions,
    ServerSpec,
    ServerUnavailable,
    machine_info,
    parse_servers,
    results_dir,
    run_checked,
    start_server,
)
from ..threads import TurnsResult, UsersConfig, run_turns

__all__ = [
    "DEFAULT_SERVERS",
    "NO_VALGRIND",
    "InstructionsPlan",
    "add_parser",
    "callgrind_total",
    "main",
    "per_turn",
    "render_markdown",
    "run_instructions",
]

DEFAULT_SERVERS = "enclave-lean,bare-trio"
#: How long a server may take to start and to stop under callgrind (it imports ~50x slower).
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 120.0
NO_VALGRIND = "valgrind not found: apt-get install -y valgrind"
_TOTAL = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


@attrs.frozen
class InstructionsPlan:
    servers: tuple[ServerSpec, ...]
    users: int = 40
    turns: int = 25
    agent_delay_ms: float = 0.0


def callgrind_total(path: Path) -> int:
    """The instructions (``Ir``) a callgrind output file counts in all: its last
    ``totals:`` or ``summary:`` line. ValueError when it has none."""
    found = _TOTAL.findall(path.read_bytes())
    if not found:
        raise ValueError(f"{path}: no totals or summary line")
    return int(found[-1])


def per_turn(with_turns: int, without: int, turns: int) -> float:
    """Instructions of one turn: what ``turns`` turns added to the run without them."""
    if turns <= 0:
        raise ValueError("turns must be positive")
    return (with_turns - without) / turns


def _count(
    procs: ProcessSet, spec: ServerSpec, plan: InstructionsPlan, turns: int, out: Path
) -> tuple[int, TurnsResult]:
    """One fresh server under callgrind while the users run ``turns`` turns each."""
    secret = secrets.token_hex(32)
    counted = out / f"{spec.name}.{turns}-turns.callgrind"
    opts = ServerOptions(
        secret=secret,
        agent_delay_ms=plan.agent_delay_ms,
        nofile=plan.users + 1024,
        start_timeout_s=START_TIMEOUT_S,
        # One hash seed for both runs: the start-up's work (dicts and sets of strings)
        # then differs less between them, and it is what the difference must cancel.
        launcher=(
            "env",
            "PYTHONHASHSEED=0",
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={counted}",
        ),
    )
    log_path = out / "logs" / f"{spec.name}.{turns}-turns.log"
    server = start_server(procs, spec, opts, cores=None, log_path=log_path)
    try:
        config = UsersConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            users=plan.users,
            turns=turns,
            connect_concurrency=8,
            phase_timeout_s=STOP_TIMEOUT_S * 5,
        )
        result = asyncio.run(run_turns(config))
    finally:
        # SIGTERM: our server drains and exits, a peer dies of it; either way callgrind
        # writes its counts as the process ends.
        code = procs.stop(server.proc, timeout_s=STOP_TIMEOUT_S)
    if code not in (0, -signal.SIGTERM):
        raise ServerUnavailable(f"exited with code {code} under callgrind (log: {log_path})")
    return callgrind_total(counted), result


def _measure(
    procs: ProcessSet, spec: ServerSpec, plan: InstructionsPlan, out: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"server": spec.name, "label": spec.label}
    # Both at once: start-up under callgrind takes most of the time, and the counts do
    # not depend on what else runs.
    with ThreadPoolExecutor(2) as pool:
        busy_run = pool.submit(_count, procs, spec, plan, plan.turns, out)
        idle_run = pool.submit(_count, procs, spec, plan, 0, out)
    try:
        with_turns, busy = busy_run.result()
        without, idle = idle_run.result()
    except (ServerUnavailable, ValueError) as exc:
        row["unavailable"] = str(exc)
        return row
    expected = plan.users * plan.turns
    row.update(
        instructions=with_turns,
        instructions_without_turns=without,
        turns=busy.completed,
        errors={**busy.errors, **{f"idle:{k}": v for k, v in idle.errors.items()}},
    )
    if busy.completed != expected or idle.connected != plan.users or row["errors"]:
        row["invalid"] = f"{busy.completed} of {expected} turns completed, errors {row['errors']}"
    else:
        row["per_turn"] = per_turn(with_turns, without, busy.completed)
    return row


def run_instructions(
    plan: InstructionsPlan, out: Path, *, progress: Progress, argv: Sequence[str]
) -> dict[str, Any]:
    """Count every server of ``plan``; writes ``results.json`` and ``results.md`` in ``out``."""
    if shutil.which("valgrind") is None:
        raise ServerUnavailable(NO_VALGRIND)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with ProcessSet() as procs:
        for index, spec in enumerate(plan.servers, 1):
            progress.log(f"[{index}/{len(plan.servers)}] {spec.name} under callgrind")
            rows.append(_measure(procs, spec, plan, out))
    markdown = render_markdown(plan, rows)
    results = {
        "kind": "instructions",
        "argv": list(argv),
        "plan": {
            "servers": [s.name for s in plan.servers],
            "users": plan.users,
            "turns": plan.turns,
            "agent_delay_ms": plan.agent_delay_ms,
        },
        "machine": machine_info(),
        "rows": rows,
        "ok": all("per_turn" in row for row in rows),
        "markdown": markdown,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown)
    return results


def render_markdown(plan: InstructionsPlan, rows: Sequence[dict[str, Any]]) -> str:
    """The table: instructions per turn, and each server against the bare Trio handler."""
    base = next(
        (r["per_turn"] for r in rows if r["server"] == "bare-trio" and "per_turn" in r), None
    )
    lines = [
        f"Instructions per turn (callgrind, user space): {plan.users} users x {plan.turns} "
        f"turns, think 0, agent delay {plan.agent_delay_ms:g} ms x 4 steps, minus the same "
        "users with 0 turns.",
        "",
        "| server | instructions per turn | over bare Trio |",
        "|---|--:|--:|",
    ]
    for row in rows:
        if "per_turn" not in row:
            why = row.get("unavailable") or row.get("invalid")
            lines.append(f"| {row['label']} | {why} | |")
            continue
        over = (
            "-"
            if base is None or row["server"] == "bare-trio"
            else f"{row['per_turn'] / base - 1:+.0%}"
        )
        lines.append(f"| {row['label']} | {row['per_turn'] / 1000:,.0f}k | {over} |")
    return "\n".join(lines) + "\n"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "instructions", help="user-space instructions per turn under callgrind (deterministic)"
    )
    parser.add_argument(
        "--servers", default=DEFAULT_SERVERS, help=f"comma-separated (default {DEFAULT_SERVERS})"
    )
    parser.add_argument("--users", type=int, default=40, help="users (default 40)")
    parser.add_argument("--turns", type=int, default=25, help="turns per user (default 25)")
    parser.add_argument(
        "--agent-delay-ms", type=float, default=0.0, help="agent delay per step (default 0)"
    )
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<time>)")


def main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run from parsed arguments; 0 when every server was counted, 1 otherwise, 2 when
    the arguments are wrong or valgrind is missing."""
    try:
        specs = parse_servers(args.servers)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.users < 1 or args.turns < 1:
        print("bench: --users and --turns must be >= 1", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print(f"bench: {NO_VALGRIND}", file=sys.stderr)
        return 2
    plan = InstructionsPlan(
        servers=tuple(specs),
        users=args.users,
        turns=args.turns,
        agent_delay_ms=args.agent_delay_ms,
    )
    return run_checked(
        "instructions", run_instructions, plan, results_dir(args.out, "instructions"), argv
    )
