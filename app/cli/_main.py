"""The ``enclave`` command: ``serve``, ``token`` and ``chat``."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import trio

from ..server._gc import FULL_COLLECTION_INTERVAL_S, collect_periodically, tune_gc_for_serving
from ..server._logging import configure_logging
from ..server._serve import RunningServer, serve
from ..server._workers import WorkerRole, supervise
from ..services._build import build_services
from ..services._services import Services
from ..services._settings import ConfigError, Settings, add_setting_arguments, load_settings
from ..threads._common import StoreConfigError
from ..web._dev_token import TokenMinter

__all__ = ["DEV_SECRET_FILE", "DEV_STORE", "ensure_dev_secret", "main"]

#: Where ``serve --dev`` keeps its generated secret (git-ignored, mode 0600).
DEV_SECRET_FILE = ".enclave/dev-secret"
#: The thread store of ``serve --dev`` unless ``--store`` says otherwise.
DEV_STORE = "sqlite:.enclave/threads.db"
EXIT_CONFIG = 2


def ensure_dev_secret(path: str | os.PathLike[str] = DEV_SECRET_FILE) -> Path:
    """Create the dev secret file (0600) unless it exists; return its path."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
    return file


def _key_configured(values: Mapping[str, str | None], environ: Mapping[str, str]) -> bool:
    names = ("jwt_secret", "jwt_secret_file", "jwks")
    return any(values.get(n) or environ.get("ENCLAVE_" + n.upper()) for n in names)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    values = {k: v for k, v in vars(args).items() if isinstance(v, str) or v is None}
    overrides: dict[str, str | bool] = {}
    if getattr(args, "dev", False) and not _key_configured(values, environ):
        overrides["jwt_secret_file"] = str(ensure_dev_secret())
    store_set = values.get("store") or environ.get("ENCLAVE_STORE")
    workers = values.get("workers") or environ.get("ENCLAVE_WORKERS") or "1"
    if getattr(args, "dev", False) and not store_set and workers.strip() == "1":
        # Dev mode keeps its threads across restarts, beside its secret (one process:
        # several workers cannot share that file, so they keep theirs in memory).
        overrides["store"] = DEV_STORE
    if args.command == "serve" and args.dev:  # the page's dev-token button
        overrides["dev_tokens"] = True
    return load_settings(values, environ, **overrides)


def _mint(settings: Settings, sub: str, ttl_s: float) -> str:
    return TokenMinter.from_settings(settings).mint(sub, now=time.time(), ttl_s=ttl_s)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enclave", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the WebSocket server")
    p_serve.add_argument(
        "--dev",
        action="store_true",
        help=f"without a configured key, use (and create) {DEV_SECRET_FILE}; print a token",
    )
    add_setting_arguments(p_serve)

    p_token = sub.add_parser("token", help="mint a token with the configured key")
    p_token.add_argument("--sub", required=True, help="subject (user id)")
    p_token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    p_token.add_argument("--dev", action="store_true", help=f"use {DEV_SECRET_FILE}")
    add_setting_arguments(p_token)

    p_chat = sub.add_parser("chat", help="interactive terminal client")
    p_chat.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="server WebSocket URL")
    p_chat.add_argument("--token", help="bearer token [ENCLAVE_TOKEN]")
    p_chat.add_argument("--json", action="store_true", help="print raw events")
    p_chat.add_argument("--thread", default=None, help="thread_id for every message")
    p_chat.add_argument(
        "--resume",
        action="store_true",
        help="keep one thread, show it from the start, and resume it after a dropped connection",
    )
    return parser


def _dev_banner(url: str, settings: Settings) -> str:
    token = _mint(settings, "dev-user", 24 * 3600)
    ws_url = "ws" + url.removeprefix("http") + settings.path
    return (
        f"trio-enclave (dev mode) listening on {url}\n"
        f"  chat in a browser: {url}/\n"
        f"  a token for user 'dev-user' (24 h):\n    {token}\n"
        f"  chat from another terminal:\n"
        f"    .venv/bin/enclave chat --url {ws_url} --token {token}\n"
        f"  more tokens: .venv/bin/enclave token --dev --sub alice\n"
    )


async def _serve_main(
    settings: Settings,
    services: Services,
    dev: bool,
    role: WorkerRole | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    async with trio.open_nursery() as process:
        process.start_soon(collect_periodically, FULL_COLLECTION_INTERVAL_S, services.log)
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(
                partial(serve, settings, services=services, handle_signals=True, sockets=sockets)
            )
            if role is not None:  # a worker of `serve --workers N`: its supervisor prints
                orphaned = partial(_orphaned, server, settings.shutdown_grace_s, services.log)
                process.start_soon(role.report_and_watch, orphaned)
            elif dev:
                print(_dev_banner(server.url, settings), flush=True)
        process.cancel_scope.cancel()  # serve() has returned: the collector goes with it


def _orphaned(server: RunningServer, grace_s: float, log: logging.Logger) -> None:
    if not server.lifecycle.draining.is_set():
        log.warning("the supervisor is gone: draining as on SIGTERM")
        server.shutdown(grace_s)


def _supervise(
    settings: Settings,
    services: Services,
    argv: Sequence[str],
    environ: Mapping[str, str],
    dev: bool,
) -> int:
    """``serve --workers N`` (N > 1): the supervisor; its workers rerun ``argv``."""

    def listening(url: str) -> None:
        if dev:
            print(_dev_banner(url, settings), flush=True)

    log = services.log.getChild("supervisor")
    return trio.run(
        partial(supervise, settings, argv, environ=environ, log=log, on_listening=listening)
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``enclave``; returns the process exit code."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "chat":
            token = args.token or environ.get("ENCLAVE_TOKEN")
            if not token:
                print("enclave chat: --token or ENCLAVE_TOKEN is required", file=sys.stderr)
                return EXIT_CONFIG
            from ._chat import run_chat

            return trio.run(
                partial(
                    run_chat,
                    args.url,
                    token,
                    json_mode=args.json,
                    thread_id=args.thread,
                    resume=args.resume,
                )
            )
        settings = _settings(args, environ)
        if args.command == "token":
            print(_mint(settings, args.sub, args.ttl))
            return 0
        configure_logging(settings.log_level, settings.log_format)
        services = build_services(settings)  # every key/agent problem surfaces before serving
        role = WorkerRole.from_environ(environ)
        if role is None and settings.workers > 1:
            return _supervise(settings, services, argv, environ, args.dev)
        sockets = None
        if role is not None:
            role.tag_logs()
            sockets = role.listening_sockets(settings)
        tune_gc_for_serving()
        trio.run(_serve_main, settings, services, args.dev, role, sockets)
    except ConfigError as exc:
        print(f"enclave: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BaseExceptionGroup as group:
        # The thread store is opened inside serve(): its refusal arrives in a group.
        store, rest = group.split(StoreConfigError)
        if store is None or rest is not None:
            raise
        print(f"enclave: configuration error: {_first_leaf(store)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C during startup
        return 130
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
