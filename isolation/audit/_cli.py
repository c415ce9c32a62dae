"""``python -m isolation audit``: the command line of the runtime isolation audit.

:func:`add_audit_parser` adds the ``audit`` subparser (its ``handler`` default is
:func:`run_audit_command`). Exit codes: 0 no violation, 1 violations, 2 usage error,
unreachable server or an audit that could not finish.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from ._plan import AuditConfig, AuditError
from ._report import EXIT_UNUSABLE
from ._run import run_audit

__all__ = ["add_audit_parser", "config_from_args", "run_audit_command"]

_DESCRIPTION = """\
Drive many concurrent simulated users against a live chat.v1 server and check every
frame each one receives: no other user's canary, run, thread, error or cancellation
may ever reach it. Works against any chat.v1 server at a URL.

Load shape: users connect in waves (--connect-concurrency) and start together; each
sends --runs messages, up to --overlap at once, after a random think time; runs are
cancelled right after agent_started (--cancel-rate), connections are reset mid-run and
re-opened (--drop-rate), ~--collide-rate of users take client and thread ids from a
small pool shared with others, and --idor-rate of users cancel another user's live run
and a never-existing id (the answers must not differ) and write into its thread.
Everything random, canaries included, derives from --seed."""

_EPILOG = """\
exit codes:
  0  no isolation violation
  1  isolation violations (evidence on stdout, all of it with --json)
  2  usage error, token source failing, server unreachable or not chat.v1,
     or the audit did not finish within --timeout

examples:
  python -m isolation audit --url ws://127.0.0.1:8000/ws --users 200 --runs 4 \\
      --jwt-secret-file .enclave/dev-secret
  python -m isolation audit --url ws://127.0.0.1:8000/ws --users 20 \\
      --token-command 'enclave token --dev --sub {sub}'"""


def add_audit_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command to ``python -m isolation``'s subparsers."""
    parser = subparsers.add_parser(
        "audit",
        help="audit a live chat.v1 server with many concurrent users",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = AuditConfig(url="ws://x")
    parser.add_argument("--url", required=True, help="WebSocket URL, e.g. ws://HOST:PORT/ws")
    parser.add_argument("--users", type=int, default=d.users, help=f"default {d.users}")
    parser.add_argument("--runs", type=int, default=d.runs, help=f"per user, default {d.runs}")
    tokens = parser.add_argument_group("tokens (exactly one source)")
    tokens.add_argument("--jwt-secret", help="HS shared secret (visible in ps; prefer a file)")
    tokens.add_argument("--jwt-secret-file", help="file holding the HS secret")
    tokens.add_argument(
        "--token-command",
        help="command printing a token, run once per user; {sub} is replaced by the user id",
    )
    tokens.add_argument("--algorithm", default=d.algorithm, help=f"default {d.algorithm}")
    tokens.add_argument("--audience", help="'aud' claim of minted tokens")
    tokens.add_argument("--issuer", help="'iss' claim of minted tokens")
    tokens.add_argument(
        "--user-prefix", default=d.user_prefix, help=f"user id prefix, default {d.user_prefix!r}"
    )
    load = parser.add_argument_group("load shape")
    load.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help=f"handshakes in flight, default {d.connect_concurrency}",
    )
    load.add_argument(
        "--overlap", type=int, default=d.overlap, help=f"concurrent runs per user ({d.overlap})"
    )
    load.add_argument(
        "--think-ms",
        type=float,
        default=d.think_ms,
        help=f"random pause before each message, 0..N ms ({d.think_ms:g})",
    )
    for name, default, text in (
        ("cancel-rate", d.cancel_rate, "share of runs cancelled after agent_started"),
        ("drop-rate", d.drop_rate, "share of runs whose connection is reset mid-run"),
        ("idor-rate", d.idor_rate, "share of users probing another user's run"),
        ("collide-rate", d.collide_rate, "share of users with ids from a shared pool"),
    ):
        load.add_argument(f"--{name}", type=float, default=default, help=f"{text} ({default:g})")
    load.add_argument(
        "--rate", type=float, help="client messages/s per connection (default: half the server's)"
    )
    load.add_argument("--seed", type=int, help="seed of every random choice (default: random)")
    limits = parser.add_argument_group("bounds and output")
    limits.add_argument(
        "--timeout", type=float, default=d.timeout_s, help=f"whole audit, s ({d.timeout_s:g})"
    )
    limits.add_argument(
        "--frame-timeout",
        type=float,
        default=d.frame_timeout_s,
        help=f"longest wait for an expected frame, s ({d.frame_timeout_s:g})",
    )
    limits.add_argument(
        "--no-subprotocol", action="store_true", help="do not offer the chat.v1 subprotocol"
    )
    limits.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    limits.add_argument(
        "--show", type=int, default=20, help="violations printed (all go to --json; 20)"
    )
    parser.set_defaults(handler=run_audit_command, command_parser=parser)


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.jwt_secret is not None and args.jwt_secret_file is not None:
        raise AuditError("give only one of --jwt-secret and --jwt-secret-file")
    if args.jwt_secret is not None:
        return str(args.jwt_secret).encode()
    if args.jwt_secret_file is not None:
        try:
            return Path(args.jwt_secret_file).read_bytes().strip()
        except OSError as exc:
            raise AuditError(f"--jwt-secret-file: {exc.strerror}: {args.jwt_secret_file}") from None
    return None


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The validated configuration of parsed ``audit`` arguments; raises AuditError."""
    config = AuditConfig(
        url=args.url,
        users=args.users,
        runs=args.runs,
        jwt_secret=_secret(args),
        token_command=args.token_command,
        algorithm=args.algorithm,
        audience=args.audience,
        issuer=args.issuer,
        connect_concurrency=args.connect_concurrency,
        overlap=args.overlap,
        think_ms=args.think_ms,
        cancel_rate=args.cancel_rate,
        drop_rate=args.drop_rate,
        idor_rate=args.idor_rate,
        collide_rate=args.collide_rate,
        seed=args.seed,
        timeout_s=args.timeout,
        frame_timeout_s=args.frame_timeout,
        rate_per_s=args.rate,
        subprotocol=None if args.no_subprotocol else "chat.v1",
        user_prefix=args.user_prefix,
    )
    config.validate()
    return config


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``audit`` for parsed arguments; print the report; return the exit code.

    Starts its own Trio run: call it from synchronous code (or a worker thread).
    """
    prog = getattr(getattr(args, "command_parser", None), "prog", "python -m isolation audit")
    try:
        config = config_from_args(args)
        report = trio.run(run_audit, config)
    except AuditError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(report.format_text(max_violations=max(0, args.show)))
    if args.json:
        try:
            Path(args.json).write_text(report.to_json() + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"{prog}: error: --json: {exc.strerror}: {args.json}", file=sys.stderr)
            return EXIT_UNUSABLE
    return report.exit_code
