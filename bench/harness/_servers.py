"""The servers under test: how to start each, pinned, and how to tell it is up.

Peers (``bench/peers``) and trio-enclave itself (``python -m app serve``) are all
started fresh for each measurement, on their own port, in their own process group.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._procfs import read_affinity, read_nofile
from ._spawn import ProcessSet, free_port, python_argv

__all__ = [
    "ORDER",
    "SERVERS",
    "RunningServer",
    "ServerOptions",
    "ServerSpec",
    "ServerUnavailable",
    "parse_servers",
    "start_server",
    "store_arg",
    "with_stores",
    "with_workers",
]

#: Thread stores the bench can put under our server: ``--store memory``,
#: ``--store sqlite:PATH`` (a fresh file next to the server's log, removed after) or
#: ``--store redis://HOST:PORT/0?prefix=bN`` (the run's own redis-server, a fresh prefix).
STORES: tuple[str, ...] = ("memory", "sqlite", "redis")

#: Our server's limits for load runs: everything on, only the rate limit raised.
ENCLAVE_LOAD_FLAGS: tuple[str, ...] = (
    "--rate-per-s",
    "1e6",
    "--rate-burst",
    "1000000",
    "--max-connections",
    "100000",
    "--connect-rate-per-s",
    "0",
)


@attrs.frozen
class ServerSpec:
    name: str
    label: str
    module: str  # python -m MODULE
    transport: str | None = None  # for trio-enclave: --transport
    description: str = ""
    store: str = "memory"  # for trio-enclave: one of STORES
    workers: int = 1  # for trio-enclave: serve --workers N (a supervisor and N workers)

    @property
    def ours(self) -> bool:
        return self.transport is not None


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "fastapi",
            "FastAPI+uvicorn",
            "bench.peers.fastapi_uvicorn",
            description="FastAPI on uvicorn (uvloop + httptools when installed, websockets-sansio)",
        ),
        ServerSpec(
            "websockets",
            "websockets",
            "bench.peers.websockets_asyncio",
            description="websockets' asyncio server",
        ),
        ServerSpec("aiohttp", "aiohttp", "bench.peers.aiohttp_server", description="aiohttp web"),
        ServerSpec(
            "enclave-asgi",
            "enclave (asgi)",
            "app",
            transport="asgi",
            description="trio-enclave, Quart-Trio on Hypercorn, full session",
        ),
        ServerSpec(
            "enclave-lean",
            "enclave (lean)",
            "app",
            transport="lean",
            description="trio-enclave, lean Trio transport, full session",
        ),
        ServerSpec(
            "bare-trio",
            "bare Trio",
            "bench.peers.bare_trio",
            description="bare Trio handler on the lean transport, no session",
        ),
    )
}
ORDER: tuple[str, ...] = tuple(SERVERS)


@attrs.frozen
class ServerOptions:
    secret: str
    agent_delay_ms: float = 0.0
    host: str = "127.0.0.1"
    extra_enclave_flags: tuple[str, ...] = ()
    nofile: int | None = None
    start_timeout_s: float = 30.0
    #: ``--store`` of an enclave on the redis store (the bench's redis-server, a fresh prefix).
    redis_url: str | None = None
    #: A command the server runs under (``valgrind --tool=callgrind ...``): argv before it.
    launcher: tuple[str, ...] = ()


class ServerUnavailable(Exception):
    """The server could not be started (or is not the transport asked for)."""


@attrs.define
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[Any]
    port: int
    log_path: Path
    info: dict[str, Any] = attrs.field(factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def store_path(self) -> Path | None:
        """The SQLite file of an enclave on ``--store sqlite:PATH``."""
        return store_path(self.spec, self.log_path)

    def discard_store(self) -> None:
        """Remove the SQLite file (and its WAL) once the server has stopped."""
        path = self.store_path
        if path is not None:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)

    def alive(self) -> bool:
        return self.proc.poll() is None


def store_path(spec: ServerSpec, log_path: Path) -> Path | None:
    """Where an enclave on the SQLite store keeps it: beside its log (fresh each start)."""
    return log_path.with_name("threads.db") if spec.ours and spec.store == "sqlite" else None


def store_arg(spec: ServerSpec, opts: ServerOptions, db: Path | None = None) -> str:
    """The ``--store`` value of an enclave spec."""
    if spec.store == "sqlite":
        if db is None:
            raise ValueError("the sqlite store needs its file")
        return f"sqlite:{db}"
    if spec.store == "redis":
        if opts.redis_url is None:
            raise ValueError("the redis store needs the bench's redis-server (redis_url)")
        return opts.redis_url
    return "memory"


def server_argv(
    spec: ServerSpec, port: int, opts: ServerOptions, db: Path | None = None
) -> list[str]:
    if spec.ours:
        assert spec.transport is not None
        workers = ("--workers", str(spec.workers)) if spec.workers != 1 else ()
        return python_argv(
            "-m",
            "app",
            "serve",
            "--transport",
            spec.transport,
            f"--jwt-secret={opts.secret}",
            "--host",
            opts.host,
            "--port",
            str(port),
            *ENCLAVE_LOAD_FLAGS,
            "--agent-delay-ms",
            f"{opts.agent_delay_ms:g}",
            "--log-level",
            "warning",
            "--store",
            store_arg(spec, opts, db),
            *workers,
            *opts.extra_enclave_flags,
        )
    return python_argv(
        "-m",
        spec.module,
        "--host",
        opts.host,
        "--port",
        str(port),
        f"--jwt-secret={opts.secret}",
        "--agent-delay-ms",
        f"{opts.agent_delay_ms:g}",
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(host: str, port: int, path: str, timeout_s: float = 3.0) -> tuple[int, dict[str, str]]:
    """(status, lower-case headers) of a plain HTTP/1.1 GET."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def start_server(
    procs: ProcessSet,
    spec: ServerSpec,
    opts: ServerOptions,
    *,
    cores: Collection[int] | None,
    log_path: Path,
) -> RunningServer:
    """Start ``spec`` and wait until it accepts connections.

    Raises ServerUnavailable when it exits, does not listen within the timeout, or
    (for ``--transport lean``) turns out to be the Hypercorn transport. The caller
    stops the process (it is registered with ``procs``).
    """
    port = free_port(opts.host)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    db = store_path(spec, log_path)
    if db is not None:
        db.unlink(missing_ok=True)  # a fresh store for every start
    with log_path.open("wb") as log:
        proc = procs.start(
            [*opts.launcher, *server_argv(spec, port, opts, db)],
            cores=cores,
            nofile=opts.nofile,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(spec, proc, port, log_path)
    deadline = time.monotonic() + opts.start_timeout_s
    while not _port_open(opts.host, port):
        if proc.poll() is not None:
            procs.stop(proc)
            tail = " ".join(_log_tail(log_path, 2).split())[-300:]
            raise ServerUnavailable(f"exited with code {proc.returncode}: {tail or 'no output'}")
        if time.monotonic() > deadline:
            procs.stop(proc)
            raise ServerUnavailable(f"not listening after {opts.start_timeout_s:g} s")
        time.sleep(0.05)
    server.info = _inspect(server, opts)
    if spec.transport == "lean" and "hypercorn" in server.info.get("server_header", ""):
        procs.stop(proc)
        raise ServerUnavailable(
            "--transport lean is served by Hypercorn (the lean transport has not landed)"
        )
    return server


def _inspect(server: RunningServer, opts: ServerOptions) -> dict[str, Any]:
    info: dict[str, Any] = {
        "pid": server.pid,
        "cpus_allowed": read_affinity(server.pid),
        "nofile": read_nofile(server.pid),
    }
    try:
        status, headers = http_get(opts.host, server.port, "/health")
        info["health"] = status
        info["server_header"] = headers.get("server", "")
    except OSError as exc:
        info["health"] = f"error: {exc}"
    first = _log_tail(server.log_path, 50).splitlines()
    if first:
        info["banner"] = first[0]
    return info


def _parse_one(name: str) -> ServerSpec | None:
    base, *suffixes = name.split("+")
    spec = SERVERS.get(base)
    if spec is None or (suffixes and not spec.ours):
        return None
    store, workers = "memory", 1
    for suffix in suffixes:
        if suffix in STORES:
            store = suffix
        elif suffix.startswith("w") and suffix[1:].isdigit() and int(suffix[1:]) >= 1:
            workers = int(suffix[1:])
        else:
            return None
    (spec,) = with_stores([spec], (store,))
    done, _skipped = with_workers([spec], (workers,))
    return done[0] if done else None  # sqlite with several workers: refused


def parse_servers(text: str) -> list[ServerSpec]:
    """Specs for a comma-separated list of names (``all`` for every server); an enclave
    name may end in ``+sqlite`` or ``+redis`` (its thread store; ``+memory`` is the
    default) and ``+wN`` (``serve --workers N``)."""
    names: Sequence[str] = (
        ORDER if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    )
    specs: list[ServerSpec] = []
    unknown: list[str] = []
    for name in names:
        spec = _parse_one(name)
        if spec is None:
            unknown.append(name)
        else:
            specs.append(spec)
    if unknown:
        raise ValueError(
            f"unknown server(s) {', '.join(unknown)}; known: {', '.join(ORDER)} "
            f"(enclave-*: +{' or +'.join(STORES)} picks the thread store, +wN the workers)"
        )
    return specs


def with_workers(
    specs: Sequence[ServerSpec], workers: Sequence[int]
) -> tuple[list[ServerSpec], list[str]]:
    """Each enclave spec once per worker count (``name+w2``), peers once; and the names
    left out: an SQLite file cannot be shared by several workers (the server refuses)."""
    out: list[ServerSpec] = []
    skipped: list[str] = []
    for spec in specs:
        if not spec.ours:
            out.append(spec)
            continue
        for n in workers:
            if n < 1:
                raise ValueError(f"workers must be >= 1, got {n}")
            if n == 1:
                out.append(spec)
            elif spec.store == "sqlite":
                skipped.append(f"{spec.name}+w{n}")
            else:
                out.append(
                    attrs.evolve(
                        spec,
                        name=f"{spec.name}+w{n}",
                        label=spec.label.replace(")", f", {n} workers)"),
                        description=f"{spec.description}; serve --workers {n}",
                        workers=n,
                    )
                )
    return out, skipped


def with_stores(specs: Sequence[ServerSpec], stores: Sequence[str]) -> list[ServerSpec]:
    """Each enclave spec once per thread store, side by side (``name+sqlite``); peers once.

    The memory store keeps the plain name, so results stay comparable with earlier runs.
    """
    out: list[ServerSpec] = []
    for spec in specs:
        if not spec.ours:
            out.append(spec)
            continue
        for store in stores:
            if store not in STORES:
                raise ValueError(f"unknown store {store!r}; known: {', '.join(STORES)}")
            if store == "memory":
                out.append(attrs.evolve(spec, store="memory"))
            else:
                out.append(
                    attrs.evolve(
                        spec,
                        name=f"{spec.name}+{store}",
                        label=spec.label.replace(")", f", {store})"),
                        description=f"{spec.description}; thread store {store}",
                        store=store,
                    )
                )
    return out
