"""The attacks' judgement: latency per window, what the server did, checks, Markdown.

Pure functions over what the children reported; :mod:`bench.attacks._runner` runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..harness import summarize

__all__ = ["Window", "expectation", "judge_transport", "render_markdown", "window_stats"]

#: Hypercorn drops a connection that sends no complete request for its keep-alive timeout.
HYPERCORN_KEEP_ALIVE_S = 5.0
#: Attacker failures that are the bench's, not the server's doing.
BROKEN = ("crashed:", "loop_stuck")
#: How long the session may take to close after deciding to (app.session._session.CLOSE_TIMEOUT_S).
CLOSE_S = 5.0


@attrs.frozen
class Window:
    """A stretch of one run: the baseline, an attack, or the recovery after them."""

    name: str
    start: float  # time.monotonic()
    end: float

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def window_stats(
    window: Window,
    timed: Sequence[Sequence[float]],
    failed: Sequence[Sequence[Any]],
    lost: Sequence[Sequence[Any]],
) -> dict[str, Any]:
    """The well-behaved users' turns sent within ``window``."""
    inside = [float(ms) for t, ms in timed if window.start <= t < window.end]
    summary = summarize(inside)
    span = max(window.end - window.start, 1e-9)
    return {
        "seconds": round(span, 2),
        "turns": len(inside),
        "turns_per_s": round(len(inside) / span, 1),
        "p50_ms": None if summary is None else round(summary.p50, 2),
        "p99_ms": None if summary is None else round(summary.p99, 2),
        "max_ms": None if summary is None else round(summary.max, 2),
        "failed": sum(1 for t, _ in failed if window.start <= float(t) < window.end),
        "lost": sum(1 for t, _ in lost if window.start <= float(t) < window.end),
    }


def expectation(
    kind: str, stats: Mapping[str, Any], *, transport: str, open_timeout_s: float,
    send_timeout_s: float,
) -> tuple[str, str]:  # fmt: skip
    """(``ok`` | ``FAIL`` | ``known``, what the server did) for one attack."""
    codes: Mapping[str, int] = stats.get("close_codes", {})
    closed = int(stats.get("server_closed", 0))
    age = (stats.get("age_s") or {}).get("max")
    # An attacker's handshake refused or timed out is the server shedding it; a crashed
    # or stuck attack loop is a fault of the bench and makes the window meaningless.
    broken = {k: v for k, v in stats.get("failures", {}).items() if k.startswith(BROKEN)}
    if broken:
        return "FAIL", "attacker broken: " + ", ".join(f"{k} {v}" for k, v in broken.items())
    # Handshakes refused for the attacker's user (429: its connect budget or the
    # cool-down after a flood close) are the server shedding it before the upgrade.
    refused = int(stats.get("refused", {}).get("429", 0))
    shed = f"; {refused:,} handshakes refused 429" if refused else ""
    if kind == "flood":
        limited = stats.get("errors", {}).get("rate_limited", 0)
        ok = codes.get("1008", 0) >= 1  # the errors may not reach a client that floods
        detail = f"{limited:,} rate_limited, {codes.get('1008', 0)} closed 1008{shed}"
        return _verdict(ok, detail)
    if kind == "oversized":
        got = codes.get("1009", 0)
        ok = got >= 1 and got >= 0.95 * closed
        return _verdict(ok, f"{got:,} of {closed:,} closed 1009{shed}")
    if kind == "slowloris":
        bound = open_timeout_s if transport == "lean" else HYPERCORN_KEEP_ALIVE_S
        ok = closed >= 1 and age is not None and age <= bound + 3.0
        return _verdict(ok, f"{closed:,} dropped, after at most {age} s (bound {bound:g} s)")
    if kind == "slow_reader":
        bound = send_timeout_s + CLOSE_S + 5.0  # + the time to fill the buffers
        detail = f"{closed} released, after at most {age} s; {stats.get('open_at_end', 0)} open"
        if transport == "asgi" and closed == 0:
            return "known", detail + " (Hypercorn shields writes: docs/operations.md)"
        return _verdict(closed >= 1 and age is not None and age <= bound, detail)
    if kind == "churn":
        ready = int(stats.get("ready", 0))
        return _verdict(ready >= 1, f"{ready:,} connect/ready/close cycles{shed}")
    return "FAIL", f"unknown attack {kind!r}"


def _verdict(ok: bool, detail: str) -> tuple[str, str]:
    return ("ok" if ok else "FAIL"), detail


def judge_transport(run: Mapping[str, Any], plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checks of one transport's run: each is ``{"name", "ok", "detail"}``."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    users = run.get("users", {})
    result = users.get("result", {})
    check(
        "server alive",
        bool(run.get("server_alive")) and not run.get("error"),
        run.get("error") or "ran to the end",
    )
    check(
        "users connected",
        result.get("connected") == plan["users"],
        f"{result.get('connected', 0):,} of {plan['users']:,}",
    )
    errors = dict(result.get("errors", {}))
    lost = len(users.get("lost", []))
    check(
        "no run lost",
        not errors and lost == 0,
        "every turn got its terminal event, no connection dropped"
        if not errors and lost == 0
        else ", ".join(f"{k} {v}" for k, v in errors.items()) + f"; {lost} dropped",
    )
    violations = int(result.get("violations", 0))
    check("isolation", violations == 0, f"{violations} violation(s)")
    limit = float(plan["ratio_limit"])
    for window in run.get("windows", []):
        if window["kind"] not in ("attack",):
            continue
        ratio = window.get("ratio")
        check(
            f"{window['name']}: p99",
            ratio is not None and ratio <= limit,
            "no turns in the window" if ratio is None else f"{ratio:.2f}x the baseline",
        )
        status, detail = window["server"]
        check(f"{window['name']}: server", status != "FAIL", f"{status}: {detail}")
    return checks


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render_markdown(results: Mapping[str, Any]) -> str:
    plan, machine = results["plan"], results["machine"]
    ok = results["ok"]
    lines = [
        f"# trio-enclave under attack ({'quick' if plan['quick'] else 'full'}): "
        f"{'PASS' if ok else 'FAIL'}",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {machine['cpu_model']}, {machine['nproc']} CPU(s); {results['topology']}",
        f"- {plan['users']:,} well-behaved users, think {plan['think_ms']:g} ms (±50 %), agent "
        f"delay {plan['agent_delay_ms']:g} ms x 4 steps; windows of {plan['window_s']:g} s "
        f"with {plan['gap_s']:g} s between; server at its default limits "
        f"(rate {plan['rate_per_s']:g}/s, burst {plan['rate_burst']}; per user "
        f"{plan.get('connect_rate_per_s', 0):g} connections/s, burst "
        f"{plan.get('connect_burst', 0)}, {plan.get('abuse_cooldown_s', 0):g} s cool-down "
        "after a flood close) with "
        f"--open-timeout-s {plan['open_timeout_s']:g} --send-timeout-s {plan['send_timeout_s']:g}",
        f"- target: p99 turn latency during each attack ≤ {plan['ratio_limit']:g}x the baseline "
        "window of the same run; no run lost; no isolation violation",
    ]
    for transport, run in results["runs"].items():
        lines += [
            "",
            f"## enclave-{transport}: {'PASS' if run['ok'] else 'FAIL'}",
            "",
            "| window | attack | turns | turns/s | p50 ms | p99 ms | p99 ratio | server CPU "
            "| RSS max MiB | fds max | server response |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for w in run.get("windows", []):
            s = w["stats"]
            ratio = "-" if w.get("ratio") is None else f"{w['ratio']:.2f}x"
            cpu = "-" if w.get("server_cpu") is None else f"{w['server_cpu']:.0%}"
            rss = "-" if w.get("rss_max_kib") is None else f"{w['rss_max_kib'] / 1024:.1f}"
            status, detail = w.get("server") or ("", "")
            response = f"{status}: {detail}" if status else ""
            lines.append(
                f"| {w['name']} | {w.get('intensity', '')} | {s['turns']:,} | {s['turns_per_s']} "
                f"| {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {ratio} | {cpu} | {rss} "
                f"| {w.get('fds_max', '-')} | {response} |"
            )
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for c in run["checks"]:
            lines.append(f"| {c['name']} | {'ok' if c['ok'] else 'FAIL'} | {c['detail']} |")
    return "\n".join(lines) + "\n"
