"""``python -m isolation mutants``: run the mutant catalogue and print what each check caught.

:func:`add_mutants_parser` adds the ``mutants`` subparser (its ``handler`` default is
:func:`run_mutants_command`). Exit codes: 0 every mutant caught as expected and the
control clean, 1 otherwise (including a mutant that no longer applies to ``app/`` or a
server that does not start), 2 usage error.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import trio

from ._catalogue import CATALOGUE, by_name
from ._model import MutantError
from ._report import as_json, format_markdown, format_text, replace_block
from ._runner import MutantOptions, MutantResult, run_mutants

__all__ = ["EXIT_UNEXPECTED", "add_mutants_parser", "run_mutants_command"]

EXIT_AS_EXPECTED = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Prove that both isolation checks can fail. Each mutant is a small, plausible change to
the app package (a process-wide manager, a registry keyed by client_id, a pooled
connection left mid-request, an lru_cache on user data, a mutable ContextVar default, a
global run table, a `global`, a debug registry). For each one, and for the unmodified
app (the control), the command copies the importable `app` package to a temporary
directory, applies the change, runs the static checker on the copy, starts the copy as
a server subprocess and audits it with a load shape that provokes each leak: colliding
ids, cancels right after agent_started, IDOR probes, overlapping runs.

Runtime time to detect: the same audit is run against a fresh server with each budget
as its timeout (then in full) until it reports the mutant's leak; the time shown is the
wall time of that attempt, an upper bound."""

_EPILOG = """\
exit codes:
  0  every mutant caught as expected, the control clean in both checks
  1  a mutant not caught as expected, a dirty control, a mutant that no longer
     applies to app/ (update isolation/mutants/_catalogue.py), or a server that
     did not start
  2  usage error

examples:
  python -m isolation mutants
  python -m isolation mutants --only pooled_desync idor_cancel --users 40
  python -m isolation mutants --update-doc docs/isolation.md --json mutants.json"""


def _budgets(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError("budgets must be positive numbers of seconds")
    return tuple(sorted(values))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_mutants_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mutants`` command to ``python -m isolation``'s subparsers."""
    parser = subparsers.add_parser(
        "mutants",
        help="apply known leaks to a copy of app/ and show that both checks catch them",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = MutantOptions()
    names = ", ".join(m.name for m in CATALOGUE)
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help=f"run only these mutants (the control always runs): {names}",
    )
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument(
        "--users", type=_positive_int, default=d.users, help=f"audited users ({d.users})"
    )
    parser.add_argument(
        "--runs", type=_positive_int, default=d.runs, help=f"runs per user ({d.runs})"
    )
    parser.add_argument(
        "--agent-delay-ms",
        type=float,
        default=d.agent_delay_ms,
        help=f"the servers' simulated model latency per agent step ({d.agent_delay_ms:g})",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help=f"audit seed ({d.seed})")
    parser.add_argument(
        "--transport",
        choices=("asgi", "lean"),
        help="the servers' transport (default: the app's default)",
    )
    parser.add_argument(
        "--budgets",
        type=_budgets,
        default=d.budgets_s,
        metavar="S,S,...",
        help="audit timeouts tried before the full audit, seconds "
        f"({','.join(f'{b:g}' for b in d.budgets_s)}); '' for the full audit only",
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown table")
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    parser.add_argument(
        "--update-doc",
        metavar="PATH",
        help="rewrite the block between <!-- mutants:begin --> and <!-- mutants:end --> "
        "of PATH with the Markdown table (whole catalogue only; not when unexpected)",
    )
    parser.set_defaults(handler=run_mutants_command, command_parser=parser)


def _progress(result: MutantResult) -> None:
    runtime = result.runtime
    if runtime.error is not None:
        seen = f"error: {runtime.error}"
    elif runtime.caught:
        seen = "caught: " + ", ".join(kind for kind, _ in runtime.kinds)
    else:
        seen = "clean" if runtime.clean else "not caught"
    static = ", ".join(sorted(result.static.codes)) or "none"
    verdict = "as expected" if result.as_expected else "UNEXPECTED"
    print(
        f"mutants: {result.mutant.name}: static {static}; runtime {seen} "
        f"({len(runtime.attempts)} audit(s)) -- {verdict}",
        file=sys.stderr,
        flush=True,
    )


def _write(path: str, text: str, prog: str, what: str) -> bool:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"{prog}: error: {what}: {exc.strerror}: {path}", file=sys.stderr)
        return False
    return True


def run_mutants_command(args: argparse.Namespace) -> int:
    """Run ``mutants`` for parsed arguments; print the table; return the exit code.

    Starts its own Trio run: call it from synchronous code (or a worker thread).
    """
    prog = getattr(getattr(args, "command_parser", None), "prog", "python -m isolation mutants")
    if args.list:
        for mutant in CATALOGUE:
            static = ", ".join(sorted(mutant.expected_static)) or "none"
            runtime = "caught" if mutant.expected_runtime else "not caught"
            print(f"{mutant.name}: static {static}; runtime {runtime}\n  {mutant.story}")
        return EXIT_AS_EXPECTED
    try:
        mutants = by_name(args.only) if args.only else CATALOGUE
    except KeyError as exc:
        names = ", ".join(m.name for m in CATALOGUE)
        print(f"{prog}: error: unknown mutant {exc.args[0]!r} (known: {names})", file=sys.stderr)
        return EXIT_USAGE
    if args.update_doc and args.only:
        print(f"{prog}: error: --update-doc needs the whole catalogue, not --only", file=sys.stderr)
        return EXIT_USAGE
    options = MutantOptions(
        users=args.users,
        runs=args.runs,
        agent_delay_ms=args.agent_delay_ms,
        seed=args.seed,
        budgets_s=args.budgets,
        transport=args.transport,
    )
    try:
        results = trio.run(partial(run_mutants, mutants, options, _progress))
    except MutantError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    print(format_text(results, options))
    ok = all(result.as_expected for result in results)
    markdown = format_markdown(results, options)
    written = True
    if args.markdown:
        written &= _write(args.markdown, markdown, prog, "--markdown")
    if args.json:
        written &= _write(args.json, as_json(results, options) + "\n", prog, "--json")
    if args.update_doc:
        if not ok:
            print(f"{prog}: not updating {args.update_doc}: not as expected", file=sys.stderr)
        else:
            try:
                replace_block(Path(args.update_doc), markdown)
            except (OSError, ValueError) as exc:
                print(f"{prog}: error: --update-doc {args.update_doc}: {exc}", file=sys.stderr)
                written = False
    return EXIT_AS_EXPECTED if ok and written else EXIT_UNEXPECTED
