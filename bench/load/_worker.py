"""A load-generator process: ``python -m bench worker`` (started by the harness).

Talks JSON lines: reads its job from stdin, writes ``connected``, ``progress`` and
``result`` lines to stdout, and waits for ``go`` (or ``stop``) on stdin between the
ramp and the window. End of stdin (the harness is gone) stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from app._gc import tune_gc_for_serving

from ..harness import raise_nofile
from ._generator import LoadConfig, LoadGenerator

__all__ = ["main"]

PROGRESS_EVERY_S = 0.5


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _readline() -> str:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


async def _progress(gen: LoadGenerator) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        _emit("progress", pid=os.getpid(), **gen.progress())


async def work(job: dict[str, Any]) -> None:
    config = LoadConfig.from_dict(job["load"])
    gen = LoadGenerator(config)
    try:
        await gen.connect_all()
        _emit("connected", connected=len(gen.connected), errors=dict(gen.errors))
        command = await _readline()
        if command == "go":
            reporter = asyncio.create_task(_progress(gen))
            try:
                if job.get("mode") == "hold":
                    await gen.hold(config.duration_s)
                else:
                    await gen.run_window()
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            _emit("window_done", **gen.progress())
    finally:
        await gen.close_all()
    _emit("result", result=gen.result().as_dict())


def main() -> int:
    raise_nofile()
    line = sys.stdin.readline()
    if not line:
        return 1
    job = json.loads(line)
    tune_gc_for_serving()  # as in bench/harness/_child.py: no collector pauses counted as latency
    factory = None
    if job.get("loop", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(work(job))
    except KeyboardInterrupt:
        return 130
    return 0
