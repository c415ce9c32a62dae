"""What ``bench soak`` and ``bench attacks`` share: results folder, plan overrides, the run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ._progress import Progress
from ._spawn import sigterm_as_interrupt

__all__ = ["RESULTS", "override", "results_dir", "run_checked"]

RESULTS = Path("bench/results")
P = TypeVar("P")


def results_dir(path: Path | None, kind: str) -> Path:
    """``path``, or ``bench/results/<time>-<kind>``."""
    return path or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def override(plan: P, changes: Mapping[str, Any]) -> P:
    """``plan`` with every change that is not None (an option the user did not give)."""
    # mypy cannot see that a TypeVar bound to nothing is an attrs class.
    return attrs.evolve(plan, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[misc]


def run_checked(
    name: str,
    run: Callable[..., dict[str, Any]],
    plan: Any,
    out: Path,
    argv: Sequence[str],
) -> int:
    """Run ``run(plan, out, ...)`` and print its Markdown.

    Returns 0 when its checks passed, 1 when not, 130 on Ctrl-C or SIGTERM.
    """
    progress = Progress()
    sigterm_as_interrupt()
    try:
        results = run(plan, out, progress=progress, argv=argv)
    except KeyboardInterrupt:
        progress.log(f"bench {name}: interrupted; every server and client process was stopped")
        return 130
    print(results["markdown"])
    print(f"results: {out}/", file=sys.stderr)
    return 0 if results["ok"] else 1
