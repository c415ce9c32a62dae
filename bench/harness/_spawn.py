"""Child processes of the harness: pinned, with a raised fd limit, always killed.

Every child gets its own process group (``start_new_session``), the open-file soft
limit raised before ``exec`` and ``PR_SET_PDEATHSIG`` (SIGKILL if the harness dies
without cleaning up). :class:`ProcessSet` kills whatever it started on exit, also on
Ctrl-C and exceptions.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "ProcessSet",
    "free_port",
    "pin_argv",
    "python_argv",
    "raise_nofile",
    "sigterm_as_interrupt",
    "stop_process",
]

PR_SET_PDEATHSIG = 1
#: The repository: children run from here, so ``python -m bench``/``app`` import.
ROOT = Path(__file__).resolve().parents[2]


def raise_nofile(wanted: int | None = None) -> tuple[int, int]:
    """Raise this process's open-file soft limit to ``wanted`` (or the hard limit);
    returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _preexec(
    cores: Collection[int] | None, nofile: int | None, taskset: bool
) -> Callable[[], None]:
    def run() -> None:
        _die_with_parent()
        raise_nofile(nofile)
        if cores and not taskset:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(cores))

    return run


def pin_argv(argv: Sequence[str], cores: Collection[int] | None) -> tuple[list[str], bool]:
    """``taskset -c CORES argv...`` when taskset exists; (argv, used taskset)."""
    if not cores:
        return list(argv), False
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(argv), False
    return [taskset, "-c", ",".join(str(c) for c in sorted(cores)), *argv], True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> int | None:
    """SIGTERM the process group, then SIGKILL it after ``timeout_s``; returns the exit code.

    The pipes to the process are closed too.
    """
    try:
        return _stop(proc, timeout_s)
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _stop(proc: subprocess.Popen[Any], timeout_s: float) -> int | None:
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # strays of an exited leader
        return proc.returncode
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
    finally:
        _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessSet:
    """Starts children and stops them all on exit (``with ProcessSet() as procs``)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        cores: Collection[int] | None = None,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[Any]:
        full, taskset = pin_argv(argv, cores)
        proc = subprocess.Popen(  # the harness's own argv, no shell
            full,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_preexec(cores, nofile, taskset),
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> int | None:
        code = stop_process(proc, timeout_s)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        return code

    def stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, timeout_s=3.0)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def python_argv(*args: str) -> list[str]:
    """``sys.executable -m ...`` of this interpreter (the venv's when run from it)."""
    return [sys.executable, *args]


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every ``finally`` runs and children die."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
