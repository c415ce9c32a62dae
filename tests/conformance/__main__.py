"""``python -m tests.conformance``: Autobahn|Testsuite's fuzzing client against both transports.

``make conformance`` runs this. It builds the suite's Python 2.7 virtualenv when it is
missing or stale (``.venv-autobahn/``), then for each transport starts our server with
``--conformance-echo true`` and runs cases 1-10 (and 12-13 when the transport
negotiates permessage-deflate) against its echo route. It prints the summary table,
writes it to ``<out>/summary.md`` (Autobahn's HTML reports are under
``<out>/<transport>/round-*/reports/``) and exits 1 when any case FAILED, did not run,
or the server died; 2 when the suite cannot be set up.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._python2 import Python2NotFound, ensure_venv, find_python2
from ._report import render_markdown
from ._run import ROOT, run_transport

TRANSPORTS = ("lean", "asgi")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--transport",
        action="append",
        choices=TRANSPORTS,
        help="transport to test (repeatable; default: both)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="PATTERN",
        help="wstest case patterns, e.g. 1.* 9.1.6 (default: 1-10, and 12-13 with deflate)",
    )
    parser.add_argument("--python2", help="the Python 2.7 interpreter [AUTOBAHN_PYTHON2]")
    parser.add_argument(
        "--venv", type=Path, default=ROOT / ".venv-autobahn", help="the suite's virtualenv"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "tests" / "conformance" / "reports",
        help="reports and logs (replaced per transport)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        wstest = ensure_venv(args.venv, find_python2(args.python2))
    except (Python2NotFound, RuntimeError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    began = time.monotonic()
    summaries = []
    for transport in args.transport or TRANSPORTS:
        out = args.out / transport
        if out.exists():
            shutil.rmtree(out)  # a fresh report per run
        summaries.append(run_transport(transport, wstest, out, cases=args.cases))
    table = render_markdown(summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(table, encoding="utf-8")
    print()
    print(table, end="")
    print(f"\nconformance: {time.monotonic() - began:.0f} s; summary in {args.out / 'summary.md'}")
    return 0 if all(s.passed for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
