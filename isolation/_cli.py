"""Command line of the isolation package: ``python -m isolation COMMAND ...``.

Each command is one subparser, added by an ``_add_<command>_command`` function that
sets ``handler`` (a function of the parsed arguments returning the exit code).
Exit codes of ``check``: 0 no findings, 1 findings, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Final

from .audit._cli import add_audit_parser
from .mutants._cli import add_mutants_parser
from .static import CODES, check_paths, python_files

__all__ = ["EXIT_CLEAN", "EXIT_FINDINGS", "EXIT_USAGE", "build_parser", "main"]

EXIT_CLEAN: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_USAGE: Final = 2


def _codes_text() -> str:
    return "\n".join(f"  {code}  {text}" for code, text in CODES.items())


def _add_check_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="statically check Python files for state shared across connections",
        description=(
            "Parse Python files (never importing them) and report process-wide state "
            "that one user's connection could leak to another. Suppress one finding "
            "with '# isolation: allow CODE -- reason' on its line."
        ),
        epilog="codes:\n" + _codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="files, or directories to search for *.py"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: one 'file:line:col CODE message' line per finding; json: a JSON list",
    )
    parser.add_argument(
        "--list-codes", action="store_true", help="print every finding code and exit"
    )
    parser.add_argument(
        "--mutable",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "treat calls to NAME as building mutable state (repeatable); a dotted name "
            "matches the import, a bare name any call target with that last component"
        ),
    )
    parser.set_defaults(handler=_run_check, command_parser=parser)


def _run_check(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    if args.list_codes:
        if args.format == "json":
            print(json.dumps(dict(CODES), indent=2), file=out)
        else:
            print(_codes_text(), file=out)
        return EXIT_CLEAN
    if not args.paths:
        parser: argparse.ArgumentParser = args.command_parser
        parser.print_usage(err)
        print(f"{parser.prog}: error: at least one PATH is required", file=err)
        return EXIT_USAGE
    try:
        files = python_files(args.paths)
    except FileNotFoundError as exc:
        print(f"{args.command_parser.prog}: error: {exc.strerror}: {exc.filename}", file=err)
        return EXIT_USAGE
    findings = check_paths(files, mutable_constructors=args.mutable)
    if args.format == "json":
        print(json.dumps([f.as_dict() for f in findings], indent=2), file=out)
    else:
        for finding in findings:
            print(finding.format(), file=out)
    noun = "file" if len(files) == 1 else "files"
    if findings:
        print(f"{len(findings)} finding(s) in {len(files)} {noun}", file=err)
        return EXIT_FINDINGS
    print(f"no findings in {len(files)} {noun}", file=err)
    return EXIT_CLEAN


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m isolation`` parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m isolation",
        description="Prove that no user's state can reach another user's connection.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_check_command(commands)
    add_audit_parser(commands)
    add_mutants_parser(commands)
    return parser


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_CLEAN
    return code if isinstance(code, int) else EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse errors and ``--help`` included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_status(exc.code)
    status: int = args.handler(args)
    return status
