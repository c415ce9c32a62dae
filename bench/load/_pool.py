"""The harness's side of the load-generator processes: start, feed, read, stop."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from ..harness import ProcessSet, python_argv
from ._generator import LoadConfig

__all__ = ["WorkerError", "WorkerPool", "split_users"]


class WorkerError(Exception):
    """A load-generator process failed or did not answer in time."""


def split_users(users: int, procs: int) -> list[tuple[int, int]]:
    """(first, count) shares of ``users`` over at most ``procs`` processes, none empty."""
    procs = max(1, min(procs, users)) if users else 1
    base, extra = divmod(users, procs)
    out: list[tuple[int, int]] = []
    first = 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        out.append((first, count))
        first += count
    return out


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.lines: list[dict[str, Any]] = []
        self.closed = False

    def feed(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.closed = True
            return
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for raw in complete:
            if raw.strip():
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(raw))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()


class WorkerPool:
    """Load-generator processes sharing the users of one measurement."""

    def __init__(
        self,
        procs: ProcessSet,
        load: LoadConfig,
        *,
        processes: int,
        cores: Collection[int] | None,
        mode: str,
        loop: str,
        log_dir: Path,
        nofile: int | None = None,
    ) -> None:
        self._procs = procs
        self.workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        log_dir.mkdir(parents=True, exist_ok=True)
        shares = split_users(load.users, processes)
        for number, (first, count) in enumerate(shares):
            share = LoadConfig.from_dict(
                {**load.as_dict(), "first_user": first, "users": count, "total_users": load.users}
            )
            with (log_dir / f"worker-{number}.log").open("ab") as log:
                proc = procs.start(
                    python_argv("-m", "bench", "worker"),
                    cores=cores,
                    nofile=nofile,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            worker = _Worker(proc)
            self.workers.append(worker)
            self._selector.register(worker.fd, selectors.EVENT_READ, worker)
            job = {"load": share.as_dict(), "mode": mode, "loop": loop}
            worker.send(json.dumps(job))

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def _pump(self, timeout_s: float) -> None:
        for key, _ in self._selector.select(max(0.0, timeout_s)):
            worker: _Worker = key.data
            worker.feed()
            if worker.closed:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(worker.fd)

    def _take(
        self, worker: _Worker, event: str, on_progress: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any] | None:
        found = None
        keep: list[dict[str, Any]] = []
        for line in worker.lines:
            kind = line.get("event")
            if found is None and kind == event:
                found = line
            elif kind == "progress":
                if on_progress is not None:
                    on_progress(line)
            else:
                keep.append(line)
        worker.lines = keep
        return found

    def wait_for(
        self,
        event: str,
        timeout_s: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``event`` line of every worker, in worker order; raises WorkerError."""
        deadline = time.monotonic() + timeout_s
        got: dict[int, dict[str, Any]] = {}
        while True:
            for i, worker in enumerate(self.workers):
                if i not in got:
                    line = self._take(worker, event, on_progress)
                    if line is not None:
                        got[i] = line
            if len(got) == len(self.workers):
                return [got[i] for i in range(len(self.workers))]
            for i, worker in enumerate(self.workers):
                if i not in got and worker.closed:
                    code = worker.proc.wait(5)
                    raise WorkerError(f"load generator {i} exited ({code}) before '{event}'")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"no '{event}' from the load generators within {timeout_s:g} s")
            self._pump(min(remaining, 0.25))

    def pump_until(
        self, deadline: float, on_progress: Callable[[dict[str, Any]], None] | None
    ) -> None:
        """Read lines until the monotonic ``deadline``, handing progress to ``on_progress``."""
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, 0.25))
            for worker in self.workers:
                self._take(worker, "", on_progress)

    def send_all(self, line: str) -> None:
        for worker in self.workers:
            worker.send(line)

    def stop(self) -> None:
        for worker in self.workers:
            self._procs.stop(worker.proc, timeout_s=3.0)
        self._selector.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
