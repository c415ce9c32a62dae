"""The soak's judgement: RSS slope, fd return, counts against targets; Markdown and a chart.

Pure functions over the samples and the clients' counters, except the chart, which
is written with matplotlib (Agg) when it is installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Check", "Sample", "judge", "render_markdown", "slope_per_min", "write_chart"]


@attrs.frozen
class Sample:
    """One look at the server: seconds since the load started, RSS, open fds, progress."""

    t: float
    rss_kib: int
    fds: int
    turns: int = 0
    cycles: int = 0

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None below 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def _unanswered(counts: Mapping[str, int]) -> int:
    """Turns sent that got neither a terminal event, a refusal, nor a deliberate drop."""
    sent, done = counts.get("turns_sent", 0), counts.get("turns_done", 0)
    return sent - done - counts.get("turns_dropped", 0)


#: Counters that must stay at zero: each is a turn or connection the server lost.
MUST_BE_ZERO = ("turns_lost", "turn_timeout", "extra_terminal", "stray_started", "bad_frame")
MUST_BE_ZERO_PREFIXES = ("unexpected_close:", "connect_failed:", "slot_", "protocol:", "error:")


def judge(
    plan: Mapping[str, Any],
    client: Mapping[str, Any],
    samples: Sequence[Sample],
    *,
    load_s: float,
    fd_baseline: int,
    fd_final: int | None,
    server_alive: bool,
) -> tuple[list[Check], dict[str, Any]]:
    """The checks of a soak and the figures they are about."""
    counts: Mapping[str, int] = client.get("counts", {})
    warm = [(s.t, float(s.rss_kib)) for s in samples if plan["warmup_s"] <= s.t <= load_s]
    slope = slope_per_min(warm)
    limit = float(plan["rss_slope_limit_kib_min"])
    zero_bad = {
        k: v
        for k, v in counts.items()
        if v and (k in MUST_BE_ZERO or k.startswith(MUST_BE_ZERO_PREFIXES))
    }
    unanswered = _unanswered(counts)
    turns, cycles = counts.get("turns_sent", 0), counts.get("cycles", 0)
    rss = [s.rss_kib for s in samples]
    figures = {
        "load_s": round(load_s, 1),
        "turns": turns,
        "cycles": cycles,
        "turns_per_s": round(turns / load_s, 1) if load_s else None,
        "cycles_per_s": round(cycles / load_s, 1) if load_s else None,
        "cancels": counts.get("cancels_sent", 0),
        "cancelled": counts.get("terminal:run_cancelled", 0),
        "dropped": counts.get("turns_dropped", 0),
        "completed": counts.get("terminal:agent_completed", 0),
        "rss_slope_kib_min": None if slope is None else round(slope, 1),
        "rss_samples_after_warmup": len(warm),
        "rss_first_kib": rss[0] if rss else None,
        "rss_max_kib": max(rss) if rss else None,
        "rss_last_kib": rss[-1] if rss else None,
        "fd_baseline": fd_baseline,
        "fd_max": max((s.fds for s in samples), default=None),
        "fd_final": fd_final,
        "violations": client.get("violations", 0),
        "unanswered": unanswered,
    }
    checks = [
        Check("server alive", server_alive, "ran to the end" if server_alive else "exited"),
        Check("turns", turns >= plan["turns"], f"{turns:,} of {plan['turns']:,}"),
        Check("cycles", cycles >= plan["cycles"], f"{cycles:,} of {plan['cycles']:,}"),
        Check(
            "one terminal per turn",
            unanswered == 0 and not zero_bad,
            f"{unanswered} unanswered"
            + ("" if not zero_bad else "; " + ", ".join(f"{k} {v}" for k, v in zero_bad.items())),
        ),
        Check("isolation", figures["violations"] == 0, f"{figures['violations']} violation(s)"),
        Check(
            "RSS slope",
            slope is not None and slope <= limit,
            "not enough samples after the warm-up"
            if slope is None
            else f"{slope:+.1f} KiB/min (limit {limit:g})",
        ),
        Check(
            "fds back to baseline",
            fd_final is not None and fd_final <= fd_baseline,
            f"{fd_final} open after the clients left, {fd_baseline} before",
        ),
    ]
    return checks, figures


def render_markdown(results: Mapping[str, Any], chart: Path | None) -> str:
    plan, figures, checks = results["plan"], results["figures"], results["checks"]
    machine = results["machine"]
    ok = all(c["ok"] for c in checks)
    lat = results["client"].get("turn_ms") or {}
    lines = [
        f"# trio-enclave soak ({'quick' if plan['quick'] else 'full'}): {'PASS' if ok else 'FAIL'}",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {machine['cpu_model']}, {machine['nproc']} CPU(s); {results['topology']}",
        f"- server: enclave-{plan['transport']}, agent delay {plan['agent_delay_ms']:g} ms x 4 "
        f"steps; {plan['slots']} connections at a time, about "
        f"{plan['turns_per_connection']} turns each, cancel {plan['cancel_p']:.0%}, "
        f"drop {plan['drop_p']:.0%} of turns",
        f"- bounded by {plan['duration_s']:g} s; warm-up {plan['warmup_s']:g} s; "
        f"RSS and fds sampled every {plan['sample_every_s']:g} s",
        "",
        "| figure | value |",
        "|---|---|",
        f"| duration | {figures['load_s']:,} s |",
        f"| connect/disconnect cycles | {figures['cycles']:,} "
        f"({figures['cycles_per_s']}/s; target {plan['cycles']:,}) |",
        f"| turns | {figures['turns']:,} ({figures['turns_per_s']}/s; target {plan['turns']:,}) |",
        f"| completed / cancelled / dropped mid-run | {figures['completed']:,} / "
        f"{figures['cancelled']:,} / {figures['dropped']:,} |",
        f"| turns without exactly one terminal event | {figures['unanswered']} |",
        f"| turn latency p50 / p99 (completed) | "
        f"{lat.get('p50', 0):.1f} / {lat.get('p99', 0):.1f} ms |",
        f"| server RSS first / max / last | {_mib(figures['rss_first_kib'])} / "
        f"{_mib(figures['rss_max_kib'])} / {_mib(figures['rss_last_kib'])} MiB |",
        f"| RSS slope after warm-up | {figures['rss_slope_kib_min']} KiB/min "
        f"(limit {plan['rss_slope_limit_kib_min']:g}) |",
        f"| open fds baseline / max / after | {figures['fd_baseline']} / {figures['fd_max']} / "
        f"{figures['fd_final']} |",
        f"| isolation violations | {figures['violations']} |",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {c['name']} | {'ok' if c['ok'] else 'FAIL'} | {c['detail']} |" for c in checks]
    samples = results["client"].get("violation_samples") or []
    if samples:
        lines += ["", "Violations (first ones):", ""] + [f"- `{s}`" for s in samples]
    if chart is not None:
        lines += ["", f"![server RSS and fds]({chart.name})"]
    return "\n".join(lines) + "\n"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def write_chart(
    samples: Sequence[Sample], out: Path, *, warmup_s: float, load_s: float, slope: float | None
) -> Path | None:
    """soak.png: server RSS (MiB) and open fds over time; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not samples:
        return None
    ts = [s.t for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.5), dpi=110)
    ax1.plot(ts, [s.rss_kib / 1024 for s in samples], color="tab:blue", label="RSS")
    warm = [s for s in samples if warmup_s <= s.t <= load_s]
    if slope is not None and len(warm) >= 2:
        mean_t = sum(s.t for s in warm) / len(warm)
        mean_v = sum(s.rss_kib for s in warm) / len(warm) / 1024
        xs = [warm[0].t, warm[-1].t]
        ys = [mean_v + slope / 60 / 1024 * (x - mean_t) for x in xs]
        ax1.plot(xs, ys, "--", color="tab:red", label=f"fit {slope:+.0f} KiB/min")
    ax1.set_ylabel("server RSS, MiB")
    ax1.legend(fontsize="small")
    ax2.plot(ts, [s.fds for s in samples], color="tab:green")
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("seconds since the load started")
    for ax in (ax1, ax2):
        ax.axvline(warmup_s, color="grey", linestyle=":", linewidth=1)
        ax.axvline(load_s, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    ax1.set_title("Soak: server memory and file descriptors (dotted: warm-up end, load end)")
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path)
    plt.close(fig)
    return path
