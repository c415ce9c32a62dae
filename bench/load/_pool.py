"""The harness's side of the load-generator processes: start, feed, read, stop.

Each process is a :class:`~bench.harness.Child` in the ``load`` role (served by
:func:`bench.load._generator.run_job`) with one share of the users.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from ..harness import Child, ChildError, ProcessSet
from ._generator import LoadConfig

__all__ = ["GeneratorPool", "split_users"]


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


class GeneratorPool:
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
        self.children: list[Child] = []
        self._selector = selectors.DefaultSelector()
        shares = split_users(load.users, processes)
        for number, (first, count) in enumerate(shares):
            share = LoadConfig.from_dict(
                {**load.as_dict(), "first_user": first, "users": count, "total_users": load.users}
            )
            job = {"role": "load", "config": share.as_dict(), "mode": mode, "loop": loop}
            child = Child(
                procs,
                job,
                cores=cores,
                log_path=log_dir / f"generator-{number}.log",
                nofile=nofile,
            )
            self.children.append(child)
            self._selector.register(child.fd, selectors.EVENT_READ, child)

    def _pump(self, timeout_s: float) -> None:
        for key, _ in self._selector.select(max(0.0, timeout_s)):
            child: Child = key.data
            child.feed()
            if child.closed:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(child.fd)

    def _take(
        self, child: Child, event: str, on_progress: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any] | None:
        found = None
        keep: list[dict[str, Any]] = []
        for line in child.lines:
            kind = line.get("event")
            if found is None and kind == event:
                found = line
            elif kind == "progress":
                if on_progress is not None:
                    on_progress(line)
            else:
                keep.append(line)
        child.lines = keep
        return found

    def wait_for(
        self,
        event: str,
        timeout_s: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``event`` line of every process, in process order; raises ChildError."""
        deadline = time.monotonic() + timeout_s
        got: dict[int, dict[str, Any]] = {}
        while True:
            for i, child in enumerate(self.children):
                if i not in got:
                    line = self._take(child, event, on_progress)
                    if line is not None:
                        got[i] = line
            if len(got) == len(self.children):
                return [got[i] for i in range(len(self.children))]
            for i, child in enumerate(self.children):
                if i not in got and child.closed:
                    code = child.proc.wait(5)
                    raise ChildError(f"load generator {i} exited ({code}) before '{event}'")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"no '{event}' from the load generators within {timeout_s:g} s")
            self._pump(min(remaining, 0.25))

    def pump_until(
        self, deadline: float, on_progress: Callable[[dict[str, Any]], None] | None
    ) -> None:
        """Read lines until the monotonic ``deadline``, handing progress to ``on_progress``."""
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, 0.25))
            for child in self.children:
                self._take(child, "", on_progress)

    def send_all(self, line: str) -> None:
        for child in self.children:
            child.send(line)

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        self._selector.close()

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
