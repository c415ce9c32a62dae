"""PNG charts of a run (matplotlib, Agg backend): throughput, p99, memory per connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from ._report import Row

__all__ = ["Line", "lines", "write_charts"]

#: By think time, in the rows' order: the run's first think time is drawn solid.
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


@attrs.frozen
class Line:
    """One server at one think time against users: a line never mixes think times."""

    label: str
    xs: tuple[int, ...]
    ys: tuple[float, ...]
    color: str  # one per server
    style: str  # one per think time
    marker: str


def lines(rows: Sequence[Row], attr: str, labels: Mapping[str, str]) -> list[Line]:
    """The lines of ``attr`` (a Row field) by users, one per server and think time;
    labels name the think time only when the rows have several."""
    servers = list(dict.fromkeys(r.server for r in rows if r.turns_per_s is not None))
    thinks = list(dict.fromkeys(r.think_ms for r in rows))
    out: list[Line] = []
    for i, server in enumerate(servers):
        for j, think in enumerate(thinks):
            points = [
                (r.users, float(value))
                for r in rows
                if r.server == server
                and r.think_ms == think
                and (value := getattr(r, attr)) is not None
            ]
            if not points:
                continue
            label = labels.get(server, server)
            if len(thinks) > 1:
                label += f", think {think:g} ms"
            xs, ys = zip(*sorted(points), strict=True)
            out.append(
                Line(
                    label,
                    xs,
                    ys,
                    f"C{i % 10}",
                    STYLES[j % len(STYLES)],
                    MARKERS[j % len(MARKERS)],
                )
            )
    return out


def write_charts(rows: Sequence[Row], out: Path, labels: Mapping[str, str]) -> list[Path]:
    """Write throughput.png, p99.png and memory.png into ``out``; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    servers = list(dict.fromkeys(r.server for r in rows if r.turns_per_s is not None))
    if not servers:
        return []
    written: list[Path] = []
    for attr, name, ylabel, title, log_y in (
        ("turns_per_s", "throughput.png", "turns/s (median)", "Throughput vs users", False),
        ("turn_p99", "p99.png", "turn latency p99, ms (median)", "p99 turn latency vs users", True),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        for line in lines(rows, attr, labels):
            ax.plot(
                line.xs,
                line.ys,
                color=line.color,
                linestyle=line.style,
                marker=line.marker,
                label=line.label,
            )
        ax.set_xscale("log")
        counts = sorted({r.users for r in rows})
        ax.set_xticks(counts, labels=[f"{n:,}" for n in counts])
        ax.minorticks_off()
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    # RSS per connection is read before the turns start: the think time does not change
    # it, and max() keeps the first row (of the run's first think time) of the largest count.
    memory = [
        (
            labels.get(s, s),
            max(
                (r for r in rows if r.server == s and r.rss_per_conn is not None),
                key=lambda r: r.users,
                default=None,
            ),
        )
        for s in servers
    ]
    bars = [(label, row) for label, row in memory if row is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        names = [label for label, _ in bars]
        values = [row.rss_per_conn / 1024 for _, row in bars if row.rss_per_conn is not None]
        ax.bar(names, values, color="tab:blue")
        for i, (_, row) in enumerate(bars):
            ax.annotate(
                f"{values[i]:.1f}\n({row.users:,})",
                (i, values[i]),
                ha="center",
                va="bottom",
                fontsize="small",
            )
        ax.set_ylim(0, max(values) * 1.18)
        ax.set_ylabel("server RSS per connection, KiB")
        ax.set_title("Memory per connected user (idle, at the largest user count)")
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / "memory.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
