"""The quick soak, end to end: the variant of ``make soak`` that runs in ``make test``.

The correctness checks are asserted; the target counts and the RSS slope are the
command's business (they depend on the machine), so they are only shown.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from bench.harness._progress import Progress
from bench.soak._runner import SoakPlan, add_parser, quick_plan, run_soak, server_options

MUST_PASS = ("server alive", "one terminal per turn", "isolation", "fds back to baseline")


def test_quick_soak(tmp_path: Path) -> None:
    stream = io.StringIO()
    results = run_soak(
        quick_plan(server_core=None),
        tmp_path,
        progress=Progress(stream, tty=False),
        argv=["python", "-m", "bench", "soak", "--quick"],
    )
    checks = {c["name"]: c for c in results["checks"]}
    for name in MUST_PASS:
        assert checks[name]["ok"], (checks[name], results["client"])
    figures = results["figures"]
    assert figures["turns"] > 0
    assert figures["cycles"] > 0
    assert figures["violations"] == 0
    assert figures["fd_final"] <= figures["fd_baseline"]
    assert figures["rss_samples_after_warmup"] >= 3
    assert len(results["samples"]) >= 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "soak"
    assert "| isolation violations | 0 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG")


def test_the_soak_server_keeps_a_thread_store_it_fills_in_the_warm_up() -> None:
    # At the server's default bound (256 MiB) the memory store was still filling two
    # minutes in, and the slope after the warm-up read that as a leak.
    opts = server_options(SoakPlan(), "secret")
    assert opts.extra_enclave_flags == ("--history-memory-mb", "16")
    assert opts.agent_delay_ms == SoakPlan().agent_delay_ms
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["soak", "--history-memory-mb", "4.5"])
    assert args.history_memory_mb == 4.5
    flags = server_options(SoakPlan(history_memory_mb=args.history_memory_mb), "s")
    assert flags.extra_enclave_flags == ("--history-memory-mb", "4.5")
