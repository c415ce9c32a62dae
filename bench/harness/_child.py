"""The one child-process protocol of the harness: ``python -m bench child``.

The harness stays a plain synchronous loop that reads ``/proc`` while the clients
work, so the clients run in children (the load generators of ``run`` and
``capacity``, the soak client, the attacks' users and attackers): each gets its job
as one JSON line on stdin, writes ``{"event": ...}`` lines to stdout and reads
commands (``go``, ``stop``) from stdin. End of stdin (the harness is gone) stops a
child. The ``role`` of a job picks the coroutine that serves it (:data:`ROLES`,
imported lazily so the harness does not load asyncio clients it does not use); its
``loop`` (``auto``, ``asyncio`` or ``uvloop``) the event loop, and ``background``
asks for CPU time nobody else wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from app.server._gc import tune_gc_for_serving

from ._spawn import ProcessSet, python_argv, raise_nofile

__all__ = ["ROLES", "Child", "ChildError", "Commands", "emit", "main"]

#: role -> "module:function"; the function is ``async def f(job, commands) -> None``.
ROLES: dict[str, str] = {
    "load": "bench.load._generator:run_job",
    "soak": "bench.soak._driver:run_job",
    "users": "bench.attacks._users:run_job",
    "attack": "bench.attacks._attackers:run_job",
}


class ChildError(Exception):
    """A child failed, or did not say what was expected in time."""


def emit(event: str, **fields: Any) -> None:
    """Write one event line to the harness (child side)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Commands:
    """The harness's command lines, read on a daemon thread (child side)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(self._queue.put_nowait, line.strip())
            loop.call_soon_threadsafe(self._queue.put_nowait, "eof")

        # A daemon thread: shutting the loop down never waits for a blocked read.
        threading.Thread(target=read, name="commands", daemon=True).start()

    async def next(self) -> str:
        """The next command; ``eof`` once the harness closed stdin."""
        return await self._queue.get()


Job = Callable[[dict[str, Any], Commands], Awaitable[None]]


def _role(name: str) -> Job:
    module, _, attr = ROLES[name].partition(":")
    job: Job = getattr(importlib.import_module(module), attr)
    return job


def background() -> None:
    """Run this process only on CPU time nobody else wants (SCHED_IDLE, else nice 19).

    The attackers share the client core with the well-behaved users' load generator:
    in the background they take all the CPU the users leave and never delay a user's
    frame, so the users' latency shows the server, not a crowded client core.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless ``asyncio`` is asked for (or uvloop is not installed)."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> int:
    """The child's entry point: one job, on uvloop unless the job says ``asyncio``."""
    raise_nofile()
    line = sys.stdin.readline()
    if not line:
        return 1
    job = json.loads(line)
    if job.get("background"):
        background()
    # The load generator measures latency: its own collector must not pause it. With
    # Python's defaults, 1,000 connections gave it full collections of 60-100 ms, taken
    # for the server's latency. The serving process's settings (app/server/_gc.py) apply here too.
    tune_gc_for_serving()
    run = _role(job["role"])
    factory = _loop_factory(str(job.get("loop", "auto")))

    async def serve() -> None:
        await run(job, Commands())

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        return 130
    return 0


class Child:
    """The harness's handle on one child (harness side)."""

    def __init__(
        self,
        procs: ProcessSet,
        job: dict[str, Any],
        *,
        cores: Collection[int] | None,
        log_path: Path,
        nofile: int | None = None,
    ) -> None:
        self._procs = procs
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.proc = procs.start(
                python_argv("-m", "bench", "child"),
                cores=cores,
                nofile=nofile,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = b""
        self._closed = False
        self.lines: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}  # the last line of each event
        self.send(json.dumps(job))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    @property
    def fd(self) -> int:
        """The child's stdout, for a harness that selects over several children."""
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether the child closed its stdout (it exited, or is about to)."""
        return self._closed

    def feed(self) -> None:
        """Take what the child wrote, without waiting (after a select said so)."""
        try:
            data = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self._closed = True
            return
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    self.lines.append(line)
                    self.latest[str(line.get("event"))] = line

    def pump(self, timeout_s: float) -> None:
        """Read what the child wrote within ``timeout_s``."""
        if self._closed:
            time.sleep(max(0.0, timeout_s))
            return
        if self._selector.select(max(0.0, timeout_s)):
            self.feed()

    def pump_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0 and not self._closed:
            self.pump(min(remaining, 0.25))
        if self._closed:
            time.sleep(max(0.0, deadline - time.monotonic()))

    def wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The first ``event`` line not yet taken; raises ChildError."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, line in enumerate(self.lines):
                if line.get("event") == event:
                    del self.lines[: i + 1]
                    return line
            if self._closed:
                code = self.proc.wait(5)
                raise ChildError(f"the {event!r} child exited ({code}) before {event!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"no {event!r} from the child within {timeout_s:g} s")
            self.pump(min(remaining, 0.25))

    def stop(self) -> None:
        self._procs.stop(self.proc, timeout_s=3.0)
        self._selector.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
