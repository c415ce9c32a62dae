"""A private ``redis-server`` for tests and benchmarks: started on an ephemeral port, stopped after.

The machines also run a Redis on 6379; tests never use it, so that what they see is
what they wrote. Nothing is kept on disk (no RDB, no AOF) unless ``appendonly`` is asked.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Final

import attrs

from ._components import find_component

__all__ = ["RedisServer", "free_port", "redis_server"]

#: How long a started redis-server may take to answer PING.
START_TIMEOUT_S: Final = 10.0


@attrs.frozen
class RedisServer:
    """A running redis-server of ours."""

    host: str
    port: int
    process: subprocess.Popen[bytes] = attrs.field(repr=False, eq=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def pid(self) -> int:
        return self.process.pid


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out (free now; a start that loses a race retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(
    binary: str | None = None, *, appendonly: bool = False, attempts: int = 5
) -> Iterator[RedisServer]:
    """Start a redis-server on 127.0.0.1 and an ephemeral port; stop it on exit.

    ``binary`` defaults to the one on PATH; in a test, a missing one skips (fails under
    ``CI=true``) through :func:`~app.testing.find_component`.
    """
    path = binary or find_component("redis-server", "redis-server", env_var="REDIS_SERVER")
    with tempfile.TemporaryDirectory(prefix="enclave-redis-") as workdir:
        last_error = "not started"
        for _ in range(attempts):
            port = free_port()
            args = [path, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "yes" if appendonly else "no", "--dir", workdir]
            args += ["--protected-mode", "yes", "--loglevel", "warning"]
            process = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                if _wait_ready(process, port):
                    try:
                        yield RedisServer("127.0.0.1", port, process)
                    finally:
                        _stop(process)
                    return
                last_error = (process.stdout.read() if process.stdout else b"").decode(
                    errors="replace"
                )
            finally:
                if process.poll() is None:
                    _stop(process)
        raise RuntimeError(f"redis-server did not start: {last_error.strip()[-500:]}")


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # e.g. the port was taken meanwhile
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()
