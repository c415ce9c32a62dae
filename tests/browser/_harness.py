"""What the browser tests and ``python -m tests.browser.screenshot`` share: a real server
process and Debian's Chromium driven by Playwright.

The server is ``python -m app serve`` (``--dev`` unless told otherwise) on 127.0.0.1 and
an ephemeral port, its key from ``ENCLAVE_JWT_SECRET`` so dev mode writes no secret
file; the port is read from its log. Chromium is the system one (env ``CHROMIUM``,
default ``/usr/bin/chromium``): Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

import attrs
from playwright.sync_api import Browser, Playwright

__all__ = [
    "CHROMIUM_ARGS",
    "ROOT",
    "SECRET",
    "Server",
    "chromium_path",
    "launch_chromium",
    "running_server",
]

ROOT: Final = Path(__file__).resolve().parents[2]
SECRET: Final = "browser-tests-secret-0123456789abcdefghij"
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Bound on the server's start-up (interpreter, imports, listen), seconds.
START_S: Final = 30.0
_LISTENING: Final = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def chromium_path() -> Path:
    return Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, talking to no other host of its own accord."""
    return playwright.chromium.launch(
        executable_path=str(chromium_path()), args=list(CHROMIUM_ARGS), timeout=30_000
    )


@attrs.frozen
class Server:
    """A running ``python -m app serve``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    transport: str

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _wait_listening(log_path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        match = _LISTENING.search(text)
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen within {START_S} s")


@contextmanager
def running_server(
    transport: str, *args: str, dev: bool = True, log_dir: Path | None = None
) -> Iterator[Server]:
    """``python -m app serve [--dev] --transport T ARGS...`` until the block ends."""
    argv = [
        sys.executable,
        "-m",
        "app",
        "serve",
        *(["--dev"] if dev else []),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--transport",
        transport,
        "--log-level",
        "info",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env["ENCLAVE_JWT_SECRET"] = SECRET
    env["ENCLAVE_STORE"] = "memory"  # not the dev store in the checkout
    env.pop("COVERAGE_PROCESS_START", None)
    fd, name = tempfile.mkstemp(prefix=f"page-{transport}-", suffix=".log", dir=log_dir)
    log_path = Path(name)
    try:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    try:
        yield Server(process, _wait_listening(log_path, process), log_path, transport)
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if log_dir is None:
            log_path.unlink(missing_ok=True)
