"""One transport's conformance run: our server with the echo route, then wstest against it.

The server is ``python -m app serve --conformance-echo true`` on 127.0.0.1, port 0 (the
port is read from its "listening on" log line), with a random secret passed in the
environment. ``wstest -m fuzzingclient`` then runs the selected cases against
``/conformance/echo``.

wstest stops at the first case it cannot connect for. If our server process died, the
run goes on in a new round: the server is started again and wstest gets the cases not
yet recorded (``exclude-cases`` lists the recorded ones), so one crash does not hide
the remaining results. Each crash is recorded with the last case recorded before it,
and the run fails. Rounds are bounded (:data:`MAX_ROUNDS`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final, Protocol

import attrs

from ._report import CaseResult, Summary, case_key, load_index, summarize

__all__ = [
    "BASE_CASES",
    "DEFLATE_CASES",
    "ECHO_PATH",
    "MAX_ROUNDS",
    "Server",
    "ServerLike",
    "fuzzing_spec",
    "offers_permessage_deflate",
    "planned_cases",
    "run_transport",
    "start_server",
]

ROOT: Final = Path(__file__).resolve().parents[2]
#: The echo route (app/transports/_conformance.py); the runner does not import the app.
ECHO_PATH: Final = "/conformance/echo"
#: RFC 6455 itself: framing, pings, reserved bits, opcodes, fragments, UTF-8, close, limits.
BASE_CASES: Final = tuple(f"{n}.*" for n in range(1, 11))
#: permessage-deflate (RFC 7692): run only where the transport negotiates it.
DEFLATE_CASES: Final = ("12.*", "13.*")
MAX_ROUNDS: Final = 20
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
#: Bound of one wstest round, seconds (cases 1-10 take about a minute).
WSTEST_TIMEOUT_S: Final = 3600.0
_LISTENING: Final = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
_WILL_RUN: Final = re.compile(r"will run (\d+) test cases")


def planned_cases(*, permessage_deflate: bool) -> tuple[str, ...]:
    """Case patterns for a transport: 1-10, plus 12-13 when it offers permessage-deflate."""
    return BASE_CASES + (DEFLATE_CASES if permessage_deflate else ())


def offers_permessage_deflate(port: int, *, timeout_s: float = 10.0) -> bool:
    """Whether the echo route at ``port`` accepts an offer of permessage-deflate."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET {ECHO_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    head = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request.encode())
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.partition(b"\r\n\r\n")[0].decode("latin-1").lower().split("\r\n")
    if not lines[0].startswith("http/1.1 101"):
        raise RuntimeError(f"the echo route refused the handshake: {lines[0]!r}")
    return any(
        line.startswith("sec-websocket-extensions:") and "permessage-deflate" in line
        for line in lines[1:]
    )


def fuzzing_spec(
    agent: str, port: int, cases: Sequence[str], exclude: Sequence[str] = ()
) -> dict[str, Any]:
    """wstest's fuzzingclient spec: one server, our echo route, reports in ``./reports``."""
    return {
        "outdir": "./reports",
        "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}{ECHO_PATH}"}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }


class ServerLike(Protocol):
    """What a run needs of a started server (a fake in tests)."""

    @property
    def port(self) -> int: ...

    def alive(self) -> bool: ...

    def stop(self) -> int | None: ...


@attrs.define
class Server:
    """Our server in its own process (and process group); owned by whoever started it."""

    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after STOP_TIMEOUT_S; the exit code."""
        try:
            if self.alive():
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(STOP_TIMEOUT_S)
            return self.process.returncode
        finally:
            self.log.close()


def start_server(transport: str, log_path: Path, *, timeout_s: float = START_TIMEOUT_S) -> Server:
    """Start ``python -m app serve`` with the echo route; return once it listens.

    Its output is appended to ``log_path``. Raises RuntimeError (with the log's tail)
    if it exits or does not listen within ``timeout_s``.
    """
    argv = [
        sys.executable,
        "-m",
        "app",
        "serve",
        "--transport",
        transport,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--conformance-echo",
        "true",
        "--log-level",
        "info",
    ]
    env = {**os.environ, "ENCLAVE_JWT_SECRET": secrets.token_urlsafe(48)}
    log = log_path.open("ab")
    start = log.tell()
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    server: Server | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            with log_path.open("rb") as reader:
                reader.seek(start)
                match = _LISTENING.search(reader.read())
            if match:
                server = Server(process, int(match.group(1)), log)
                return server
            time.sleep(0.1)  # polling a log file: there is no event to wait for
        tail = log_path.read_bytes()[start:][-2000:].decode(errors="replace")
        raise RuntimeError(f"the {transport} server did not start listening:\n{tail}")
    finally:
        if server is None:
            if process.poll() is None:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
            log.close()


def _wstest(wstest: Path, spec: dict[str, Any], round_dir: Path) -> int | None:
    """One wstest run in ``round_dir``; the number of cases it planned (from its log)."""
    round_dir.mkdir(parents=True, exist_ok=True)
    (round_dir / "spec.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # cryptography's "Python 2 is deprecated"
    with (round_dir / "wstest.log").open("wb") as log:
        subprocess.run(
            [str(wstest), "-m", "fuzzingclient", "-s", "spec.json"],
            cwd=round_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=WSTEST_TIMEOUT_S,
            check=False,
        )
    match = _WILL_RUN.search((round_dir / "wstest.log").read_text(errors="replace"))
    return int(match.group(1)) if match else None


def run_transport(
    transport: str,
    wstest: Path,
    out_dir: Path,
    *,
    cases: Sequence[str] | None = None,
    say: Callable[[str], object] = print,
    start: Callable[[str, Path], ServerLike] = start_server,
    probe: Callable[[int], bool] = offers_permessage_deflate,
) -> Summary:
    """The cases against ``transport``, in as many rounds as crashes need.

    ``cases`` defaults to :func:`planned_cases` for what the transport negotiates,
    probed once its server listens.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, CaseResult] = {}
    crashes: list[str] = []
    expected: int | None = None
    deflate = False
    began = time.monotonic()
    for number in range(1, MAX_ROUNDS + 1):
        server = start(transport, out_dir / "server.log")
        round_dir = out_dir / f"round-{number}"
        try:
            if number == 1:
                deflate = probe(server.port)
                if cases is None:
                    cases = planned_cases(permessage_deflate=deflate)
                say(
                    f"{transport}: server on port {server.port}; permessage-deflate "
                    f"{'offered' if deflate else 'not offered'}; cases {' '.join(cases)}"
                )
            else:
                say(f"{transport}: round {number}, server on port {server.port}")
            assert cases is not None
            spec = fuzzing_spec(transport, server.port, cases, sorted(results, key=case_key))
            planned = _wstest(wstest, spec, round_dir)
        finally:
            died = not server.alive()
            server.stop()
        if expected is None:
            expected = planned
        index = round_dir / "reports" / "index.json"
        recorded = load_index(index).get(transport, []) if index.exists() else []
        results.update((r.case, r) for r in recorded)
        if not died:
            break
        last = recorded[-1].case if recorded else "(before its first case)"
        crashes.append(last)
        say(f"{transport}: the server died during or right after case {last}")
        if not recorded or (expected is not None and len(results) >= expected):
            break
    return summarize(
        transport,
        results.values(),
        expected=expected,
        crashes=crashes,
        seconds=time.monotonic() - began,
        permessage_deflate=deflate,
    )
