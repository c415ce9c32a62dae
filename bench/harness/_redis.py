"""The bench's own redis-server and what it costs per turn.

A run on ``--stores redis`` starts one private redis-server (``app.testing.redis_server``,
never the machine's Redis on 6379), pins it with the server under test, and gives every
measurement a fresh key prefix. Around the measured window the harness talks to it over
a small blocking RESP client (the harness is not async): ``CONFIG RESETSTAT`` at the
window's start, ``INFO commandstats`` at its end.

``INFO commandstats`` counts a command run inside a Lua script under its own name, as it
counts the same command sent by a client; so which calls were round trips (the backend's
``EVALSHA``, ``XREAD``, ``SET``, ...) and which ran inside a script is read from a short
``MONITOR`` sample taken at the end of the warm-up (script calls show as ``[0 lua]``), and
applied per command name to the window's exact counts. The parsers are pure functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "HARNESS_COMMANDS",
    "BenchRedis",
    "MonitorSample",
    "RedisError",
    "RedisWindow",
    "bench_redis",
    "encode_command",
    "monitor_sample",
    "parse_commandstats",
    "parse_monitor_line",
    "pin_threads",
    "read_reply",
    "redis_window",
]

#: Commands the harness itself sends: never counted as the store's.
HARNESS_COMMANDS = frozenset({"info", "monitor", "flushall", "flushdb", "ping", "command"})


class RedisError(Exception):
    """An error reply, or a connection that closed or timed out."""


def encode_command(*args: str | bytes | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _line(buf: bytearray, sock: socket.socket) -> bytes:
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line
        chunk = sock.recv(65536)
        if not chunk:
            raise RedisError("redis-server closed the connection")
        buf += chunk


def read_reply(buf: bytearray, sock: socket.socket) -> Any:
    """One reply (simple string, error, integer, bulk string or array) from ``sock``;
    ``buf`` holds what was read past the previous reply."""
    line = _line(buf, sock)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise RedisError("redis-server closed the connection")
            buf += chunk
        data = bytes(buf[:size])
        del buf[: size + 2]
        return data
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(buf, sock) for _ in range(count)]
    raise RedisError(f"not a RESP reply: {line[:80]!r}")


def command(host: str, port: int, *args: str | int, timeout_s: float = 5.0) -> Any:
    """Send one command on a fresh connection and return its reply."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_command(*args))
        return read_reply(bytearray(), sock)


def parse_commandstats(text: str) -> dict[str, tuple[int, int]]:
    """``{command: (calls, usec)}`` from the text of ``INFO commandstats``.

    Subcommands keep Redis's spelling (``config|resetstat``); names are lower case.
    """
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        name, sep, fields = line.strip().partition(":")
        if not sep or not name.startswith("cmdstat_"):
            continue
        values = dict(part.partition("=")[::2] for part in fields.split(","))
        try:
            out[name[len("cmdstat_") :].lower()] = (int(values["calls"]), int(values["usec"]))
        except (KeyError, ValueError):
            continue
    return out


def parse_monitor_line(line: str) -> tuple[str, bool] | None:
    """(command, from a script) of one ``MONITOR`` line, e.g.
    ``1700000000.1 [0 lua] "xadd" ...``; None for anything else (``OK``)."""
    start = line.find("[")
    end = line.find("]", start + 1)
    if start < 0 or end < 0:
        return None
    source = line[start + 1 : end].split(" ", 1)
    rest = line[end + 1 :].strip()
    if not rest.startswith('"'):
        return None
    close = rest.find('"', 1)
    if close < 0:
        return None
    name = rest[1:close].lower()
    return name, len(source) == 2 and source[1] == "lua"


@attrs.frozen
class MonitorSample:
    """Calls seen by ``MONITOR``, by command: sent by clients, run inside scripts."""

    client: Mapping[str, int] = attrs.field(factory=dict)
    script: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_lines(cls, lines: Iterator[str] | list[str]) -> MonitorSample:
        client: Counter[str] = Counter()
        script: Counter[str] = Counter()
        for line in lines:
            got = parse_monitor_line(line)
            if got is None or got[0] in HARNESS_COMMANDS:
                continue
            (script if got[1] else client)[got[0]] += 1
        return cls(dict(client), dict(script))

    def script_share(self, name: str) -> float:
        """The share of ``name``'s calls that ran inside scripts (0 when never seen: a
        command no sample saw is taken as a round trip)."""
        base = name.split("|", 1)[0]
        inner, outer = self.script.get(base, 0), self.client.get(base, 0)
        return inner / (inner + outer) if inner + outer else 0.0


@attrs.frozen
class RedisWindow:
    """What Redis did for the store over one measured window."""

    calls: Mapping[str, int]  # by command, round trips and script calls together
    round_trips: float  # commands sent by the servers (EVALSHA, XREAD, SET, ...)
    script_calls: float  # commands run inside the Lua scripts
    cpu_s: float | None  # redis-server's utime + stime over the window
    sampled: int  # MONITOR lines the split between the two rests on

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["commands"] = self.commands
        return out


def redis_window(
    stats: Mapping[str, tuple[int, int]], sample: MonitorSample, cpu_s: float | None
) -> RedisWindow:
    """The window's counts (``stats`` read after ``CONFIG RESETSTAT``), split into round
    trips and script calls by the shares ``sample`` saw; the harness's own commands left out."""
    calls = {
        name: count
        for name, (count, _usec) in stats.items()
        if name.split("|", 1)[0] not in HARNESS_COMMANDS and not name.startswith("config")
    }
    inner = sum(count * sample.script_share(name) for name, count in calls.items())
    return RedisWindow(
        calls=dict(sorted(calls.items())),
        round_trips=sum(calls.values()) - inner,
        script_calls=inner,
        cpu_s=cpu_s,
        sampled=sum(sample.client.values()) + sum(sample.script.values()),
    )


def monitor_sample(
    host: str, port: int, seconds: float, *, max_lines: int = 200_000
) -> MonitorSample:
    """``MONITOR`` for ``seconds`` (bounded by ``max_lines``); what it saw by command."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(encode_command("MONITOR"))
        buf = bytearray()
        while len(lines) < max_lines:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(262144)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            *done, rest = bytes(buf).split(b"\r\n")
            buf = bytearray(rest)
            lines.extend(d.decode(errors="replace").lstrip("+") for d in done)
    return MonitorSample.from_lines(lines)


class MonitorThread:
    """:func:`monitor_sample` in a thread, while the harness pumps the load generators."""

    def __init__(self, host: str, port: int, seconds: float) -> None:
        self.result: MonitorSample | None = None
        self.error: str | None = None
        self._thread = threading.Thread(
            target=self._run, args=(host, port, seconds), name="redis-monitor", daemon=True
        )
        self._thread.start()

    def _run(self, host: str, port: int, seconds: float) -> None:
        try:
            self.result = monitor_sample(host, port, seconds)
        except (OSError, RedisError) as exc:
            self.error = str(exc)

    def join(self, timeout_s: float) -> MonitorSample:
        """The sample (empty when it failed or is late: every call then counts as a round trip)."""
        self._thread.join(timeout_s)
        return self.result or MonitorSample()


def pin_threads(pid: int, cores: set[int] | None, root: Path = Path("/proc")) -> bool:
    """Pin every thread of ``pid`` (redis-server has I/O and background threads) to
    ``cores`` (every allowed core for None); False when it could not."""
    target = cores or set(range(os.cpu_count() or 1))
    ok = True
    try:
        tids = [int(t) for t in os.listdir(root / str(pid) / "task")]
    except OSError:
        return False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, target)
        except OSError:
            ok = False
    return ok


@attrs.define
class BenchRedis:
    """The run's private redis-server."""

    host: str
    port: int
    pid: int
    prefixes: int = 0

    def url(self, prefix: str) -> str:
        return f"redis://{self.host}:{self.port}/0?prefix={prefix}"

    def next_url(self) -> str:
        """A URL with a key prefix no earlier measurement used (``b1``, ``b2``, ...)."""
        self.prefixes += 1
        return self.url(f"b{self.prefixes}")

    def command(self, *args: str | int) -> Any:
        return command(self.host, self.port, *args)

    def reset_stats(self) -> None:
        self.command("CONFIG", "RESETSTAT")

    def commandstats(self) -> dict[str, tuple[int, int]]:
        reply = self.command("INFO", "commandstats")
        return parse_commandstats(reply.decode() if isinstance(reply, bytes) else str(reply))

    def flush(self) -> None:
        """Drop every key (between measurements: each starts on an empty Redis)."""
        self.command("FLUSHALL")

    def pin(self, cores: set[int] | None) -> bool:
        return pin_threads(self.pid, cores)


@contextlib.contextmanager
def bench_redis() -> Iterator[BenchRedis]:
    """A private redis-server for one run (on an ephemeral port, no persistence).

    Raises FileNotFoundError when redis-server is not installed.
    """
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get install -y redis-server")
    from app.testing import redis_server

    with redis_server(binary) as server:
        yield BenchRedis(server.host, server.port, server.pid())
