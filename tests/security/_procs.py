"""Real server processes for the fault and shutdown tests (clients: ``_clients.py``).

The server runs as ``python -m app serve`` in its own process group so a test can
signal it (SIGTERM, SIGKILL) exactly as an orchestrator would, limit its open files,
and read its CPU time and log.

The module also holds :func:`fault_agent`, the ``--agent`` factory the server
subprocess loads (``--agent tests.security._procs:fault_agent``): its runs fail on
request, so one user's runs can hit every agent fault while other users chat.

Every wait is bounded; the bounds are generous because the tests run on a loaded
two-core machine.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from app import (
    Agent,
    AgentOptions,
    AgentThinking,
    EchoAgent,
    Emit,
    RunContext,
    ToolCompleted,
    mint_token,
)

__all__ = [
    "FAULT_AGENT",
    "SECRET",
    "FaultAgent",
    "ServerProcess",
    "env_float",
    "env_int",
    "fault_agent",
    "gather",
    "server_process",
    "token",
]

#: The repository root: the server runs from here so ``-m app`` and the agent import.
ROOT: Final = Path(__file__).resolve().parents[2]
SECRET: Final = "security-faults-secret-0123456789abcdefghij"
FAULT_AGENT: Final = "tests.security._procs:fault_agent"
#: Bound on the server's start-up (interpreter, imports, listen), seconds.
START_S: Final = 30.0
_LISTENING: Final = re.compile(r"listening on https?://[^\s/]+:(\d+)")


def token(sub: str, *, ttl_s: float = 3600.0) -> str:
    """An HS256 token for ``sub`` signed with :data:`SECRET`."""
    return mint_token(
        secret=SECRET.encode(), algorithm="HS256", subject=sub, ttl_s=ttl_s, now=time.time()
    )


# -- the agent the server subprocess loads ------------------------------------------


@attrs.frozen
class FaultAgent:
    """The echo agent, except for runs whose text names a fault.

    ``hang`` never returns (until the run timeout cancels it), ``raise`` raises,
    ``invalid`` emits an event an agent may not, ``unjson`` emits a payload that is
    not JSON, ``slow`` sleeps for an hour (cancelled by a shutdown or a client).
    """

    delay_s: float = 0.0
    name: str = "faults"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        if run.text == "hang":
            await trio.sleep_forever()
        if run.text == "raise":
            raise RuntimeError("a deliberate agent failure")
        if run.text == "invalid":
            await emit("not an event")  # type: ignore[arg-type]  # the fault under test
        if run.text == "unjson":
            await emit(ToolCompleted(tool_name="t", results={"bad": {1, 2}}))
        if run.text == "slow":
            await emit(AgentThinking(thought="this will take a while"))
            await trio.sleep(3600)
        return await EchoAgent(delay_s=self.delay_s).run(run, emit)


def fault_agent(options: AgentOptions) -> Agent:
    """The ``--agent`` factory of :class:`FaultAgent`."""
    return FaultAgent(delay_s=options.delay_s)


# -- the server process ---------------------------------------------------------------


@attrs.define
class ServerProcess:
    """A running ``python -m app serve``: its process, port and stderr log."""

    process: trio.Process
    port: int
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit status; fails the test (TooSlowError) if it takes over ``timeout_s``."""
        with trio.fail_after(timeout_s):
            return await self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (from /proc)."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rfind(")") + 1 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _preexec(nofile: int | None) -> Callable[[], None] | None:
    if nofile is None:
        return None

    def limit() -> None:  # runs in the child between fork and exec
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return limit


async def _wait_listening(log: Path, process: trio.Process) -> int:
    with trio.fail_after(START_S):
        while True:
            text = await trio.Path(log).read_text(encoding="utf-8", errors="replace")
            match = _LISTENING.search(text)
            if match:
                return int(match.group(1))
            if process.poll() is not None:
                raise AssertionError(f"the server exited ({process.returncode}):\n{text}")
            await trio.sleep(0.05)


@asynccontextmanager
async def server_process(
    log_dir: Path,
    *args: str,
    transport: str,
    port: int = 0,
    nofile: int | None = None,
) -> AsyncIterator[ServerProcess]:
    """``python -m app serve --transport T --port P ARGS...`` until the block ends.

    The key comes from ``ENCLAVE_JWT_SECRET``; stderr (the log) goes to a file in
    ``log_dir``; ``nofile`` sets the child's open-file soft limit. On the way out,
    cancelled or not, the process group is killed (SIGKILL) if the server still runs.
    """
    argv = [
        sys.executable,
        "-m",
        "app",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--transport",
        transport,
        "--log-level",
        "info",
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env["ENCLAVE_JWT_SECRET"] = SECRET
    env.pop("COVERAGE_PROCESS_START", None)
    fd, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=log_dir)
    log_path = Path(name)
    try:
        process = await trio.lowlevel.open_process(
            argv,
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            start_new_session=True,
            preexec_fn=_preexec(nofile),
        )
    finally:
        os.close(fd)
    try:
        bound = await _wait_listening(log_path, process)
        yield ServerProcess(process, bound, log_path)
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()


async def gather(*thunks: Callable[[], Any]) -> list[Any]:
    """Run the coroutine functions concurrently; their results in order.

    Cancellation: all of them are cancelled; the first error cancels the others.
    """
    results: list[Any] = [None] * len(thunks)

    async def one(i: int, thunk: Callable[[], Any]) -> None:
        results[i] = await thunk()

    async with trio.open_nursery() as nursery:
        for i, thunk in enumerate(thunks):
            nursery.start_soon(one, i, thunk)
    return results


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (longer variants of the tests)."""
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    """A number knob from the environment (longer variants of the tests)."""
    return float(os.environ.get(name, default))
