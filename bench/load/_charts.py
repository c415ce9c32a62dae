"""PNG charts of a run (matplotlib, Agg backend): throughput, p99, memory per connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ._report import Row

__all__ = ["write_charts"]


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

    def series(server: str, attr: str) -> tuple[list[int], list[float]]:
        xs: list[int] = []
        ys: list[float] = []
        for r in rows:
            value = getattr(r, attr)
            if r.server == server and value is not None:
                xs.append(r.users)
                ys.append(float(value))
        return xs, ys

    for attr, name, ylabel, title, log_y in (
        ("turns_per_s", "throughput.png", "turns/s (median)", "Throughput vs users", False),
        ("turn_p99", "p99.png", "turn latency p99, ms (median)", "p99 turn latency vs users", True),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        for server in servers:
            xs, ys = series(server, attr)
            if xs:
                ax.plot(xs, ys, marker="o", label=labels.get(server, server))
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
