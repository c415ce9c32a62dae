"""``enclave serve --workers N``: the back-off policy, the worker's role, and the supervisor
as a real process (``python -m app serve --workers 2``) on 127.0.0.1, port 0.

Which worker a connection landed on is told by its ``connection_ready`` epoch: each worker
has a memory store of its own, with an epoch of its own.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio

from app.server import WORKER_INDEX_ENV, Backoff, WorkerRole
from app.services._settings import ConfigError, Settings

if TYPE_CHECKING:
    from tests.app.conftest import E2E, Endpoint

SECRET: Final = "workers-test-secret-0123456789abcdef"
LISTENING: Final = re.compile(r"listening on http://127\.0\.0\.1:(\d+) \(2 workers\)")
STARTED: Final = re.compile(r"worker (\d) started \(pid (\d+)\)")
#: A worker's drain starts in the step that logs this.
DRAINING: Final = re.compile(r"SIGTERM: draining")
#: Generous bound on the supervisor and its workers starting (imports included).
START_S: Final = 20.0


# -- the back-off policy ----------------------------------------------------------------


def test_backoff_starts_at_the_initial_delay() -> None:
    assert Backoff().next_delay(0.0, uptime_s=0.1) == 0.5


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, reset_after_s=60.0)
    delays = [0.0]
    for _ in range(9):
        delays.append(backoff.next_delay(delays[-1], uptime_s=1.0))
    assert delays[1:] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_resets_after_a_long_uptime() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, reset_after_s=60.0)
    assert backoff.next_delay(16.0, uptime_s=59.9) == 30.0
    assert backoff.next_delay(16.0, uptime_s=60.0) == 0.5


# -- the worker's role and the setting ----------------------------------------------------


def test_role_comes_from_the_environment() -> None:
    assert WorkerRole.from_environ({}) is None
    assert WorkerRole.from_environ({WORKER_INDEX_ENV: "1"}) is None
    env = {WORKER_INDEX_ENV: "1", "ENCLAVE_WORKER_CHANNEL_FD": "7"}
    assert WorkerRole.from_environ(env) == WorkerRole(index=1, channel_fd=7)
    env["ENCLAVE_WORKER_LISTEN_FD"] = "8"
    assert WorkerRole.from_environ(env) == WorkerRole(index=1, channel_fd=7, listen_fd=8)


def _settings(**values: object) -> Settings:
    return Settings(jwt_secret=SECRET.encode(), **values)  # type: ignore[arg-type]


def test_workers_setting_rules() -> None:
    _settings(workers=1, store="sqlite:x.db").validate()
    _settings(workers=4).validate()  # memory: allowed (each worker its own threads)
    with pytest.raises(ConfigError, match="one SQLite file cannot be shared"):
        _settings(workers=2, store="sqlite:x.db").validate()
    with pytest.raises(ConfigError, match="--workers"):
        _settings(workers=0).validate()
    # The Redis store is shared by every worker: --workers does not object to it.
    _settings(workers=2, store="redis://127.0.0.1:1/0").validate()


def test_workers_auto_is_one_per_cpu() -> None:
    from app.services._settings import load_settings

    settings = load_settings({"workers": "auto", "jwt_secret": SECRET}, {})
    assert settings.workers == (os.cpu_count() or 1)
    assert load_settings({}, {"ENCLAVE_WORKERS": "3", "ENCLAVE_JWT_SECRET": SECRET}).workers == 3


# -- the supervisor as a process ----------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@attrs.define
class Supervisor:
    """A running ``python -m app serve --workers 2 ...``, its output collected."""

    process: trio.Process
    out: bytearray = attrs.field(factory=bytearray)
    err: bytearray = attrs.field(factory=bytearray)

    async def wait_for(self, pattern: re.Pattern[str], count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in stderr, once there are that many."""
        with trio.fail_after(START_S):
            while True:
                found = list(pattern.finditer(self.err.decode(errors="replace")))
                if len(found) >= count:
                    return found[:count]
                assert self.process.returncode is None, self.report()
                await trio.sleep(0.02)

    def pids(self) -> dict[int, int]:
        """The pid of each worker, as last (re)started."""
        return {
            int(m.group(1)): int(m.group(2))
            for m in STARTED.finditer(self.err.decode(errors="replace"))
        }

    def report(self) -> str:
        out, err = self.out.decode(errors="replace"), self.err.decode(errors="replace")
        return f"stdout:\n{out}\nstderr:\n{err}"


async def _pump(source: trio.abc.ReceiveStream | None, sink: bytearray) -> None:
    assert source is not None
    while chunk := await source.receive_some(65_536):
        sink += chunk


@asynccontextmanager
async def supervisor(*extra: str, cwd: Path | None = None) -> AsyncIterator[Supervisor]:
    """``serve --workers 2`` on 127.0.0.1:0; killed (workers too) on exit if still running."""
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--jwt-secret", SECRET]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "app", *args, "--workers", "2", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=cwd,
    )
    proc = Supervisor(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, process.stdout, proc.out)
            nursery.start_soon(_pump, process.stderr, proc.err)
            try:
                yield proc
            finally:
                if process.returncode is None:
                    process.kill()  # its workers see their lifeline end and stop
                with trio.fail_after(10):
                    await process.wait()
                    for pid in proc.pids().values():  # bounded: the workers follow
                        while _alive(pid):  # noqa: ASYNC110 - another process: no event to wait on
                            await trio.sleep(0.05)
    finally:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of the (killed) supervisor counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _epochs(client: Endpoint, e2e: E2E, connections: int) -> set[str]:
    """The epochs of ``connections`` chat connections opened together (a user each)."""
    epochs: set[str] = set()
    all_open = trio.Event()

    async def one(i: int) -> None:
        async with client.chat(e2e.token(f"user{i}", secret=SECRET.encode())) as chat:
            epochs.add(chat.ready["epoch"])
            if len(epochs) == 2 or i == connections - 1:
                all_open.set()
            await all_open.wait()  # held open: a busy worker is not an idle one

    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(one, i)
    return epochs


async def test_two_workers_serve_one_port(e2e: E2E) -> None:
    async with supervisor() as proc:
        (listening,) = await proc.wait_for(LISTENING)
        port = int(listening.group(1))
        client = e2e.endpoint("127.0.0.1", port)
        with trio.fail_after(10):
            # The kernel spreads connections by a hash: all 24 on one worker is 2**-23.
            assert len(await _epochs(client, e2e, 24)) == 2
        err = proc.err.decode()
        assert err.count("(2 workers)") == 1
        for index in (0, 1):
            assert re.search(rf"\[worker {index}\]: listening on http://127\.0\.0\.1:{port}", err)
        assert "each worker keeps its own threads" in err  # --store memory


async def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(e2e: E2E) -> None:
    async with supervisor() as proc:
        port = int((await proc.wait_for(LISTENING))[0].group(1))
        client = e2e.endpoint("127.0.0.1", port)
        pids = proc.pids()
        assert len(pids) == 2
        failures: list[BaseException] = []
        served = 0

        async def poll() -> None:
            nonlocal served
            while True:
                try:
                    assert (await client.get("/health")).status == 200
                    served += 1
                except (
                    OSError,
                    AssertionError,
                    trio.TooSlowError,
                    trio.BrokenResourceError,
                ) as exc:
                    failures.append(exc)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.2)
            os.kill(pids[1], signal.SIGKILL)
            await proc.wait_for(re.compile(r"worker 1 exited unexpectedly \(killed by SIGKILL\)"))
            await proc.wait_for(STARTED, count=3)
            await proc.wait_for(re.compile(r"\[worker 1\]: listening on"), count=2)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        new_pids = proc.pids()
        assert new_pids[0] == pids[0]
        assert new_pids[1] != pids[1]
        # At most the one request the dying worker had taken (if any) is lost.
        assert len(failures) <= 1, failures
        assert served >= 10
        with trio.fail_after(10):
            assert len(await _epochs(client, e2e, 24)) == 2  # both serve again


async def _ready_status(client: Endpoint) -> int | None:
    """``/ready``'s status, or None when the connection was reset or refused (a worker
    that finished draining closed its listener with the request in its queue)."""
    try:
        return (await client.get("/ready")).status
    except (trio.BrokenResourceError, OSError):
        return None


async def test_sigterm_drains_every_worker_then_exits_0(e2e: E2E) -> None:
    token = e2e.token("alice", secret=SECRET.encode())
    grace = "3"
    async with supervisor(
        "--shutdown-grace-s", grace, "--agent-delay-ms", "300", "--ping-interval-s", "0.3"
    ) as proc:
        port = int((await proc.wait_for(LISTENING))[0].group(1))
        client = e2e.endpoint("127.0.0.1", port)
        async with client.chat(token) as chat:
            started = await chat.start("drain me")
            signalled = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            # Each worker logs its drain and starts it in the same step: once both lines
            # are out, no worker answers /ready 200. (The supervisor forwards the signal to
            # one worker after the other: before that, one may still be ready.)
            await proc.wait_for(DRAINING, count=2)
            # Whichever answers, /ready is 503. The worker without a connection finishes
            # draining at once and closes its listener: a request the kernel had queued on
            # that listener is reset (none answers), never served 200. The worker draining
            # the run (1.2 s) answers 503.
            statuses: list[int | None] = []
            with trio.fail_after(5):
                while len(statuses) < 6 or 503 not in statuses:
                    statuses.append(await _ready_status(client))
                    assert set(statuses) <= {503, None}, statuses
            frames = await chat.run_until_terminal(started["run_id"])
            assert frames[-1]["type"] == "agent_completed"
            assert await chat.closed() == (1001, "server_shutdown")
        with trio.fail_after(3 + 5):
            assert await proc.process.wait() == 0, proc.report()
        assert time.monotonic() - signalled < 3 + 5
        assert proc.err.count(b"SIGTERM: draining") == 2, proc.report()
    assert b"Traceback" not in proc.err, proc.report()


async def test_dev_mode_prints_the_banner_once(tmp_path: Path) -> None:
    async with supervisor("--dev", cwd=tmp_path) as proc:
        await proc.wait_for(LISTENING)
        with trio.fail_after(5):
            while b"more tokens:" not in proc.out:  # noqa: ASYNC110
                await trio.sleep(0.02)
        await trio.sleep(0.3)
        assert proc.out.count(b"(dev mode) listening on") == 1, proc.report()
        assert b"thread store memory" in proc.err  # not the dev SQLite file: two workers


async def test_workers_with_a_sqlite_store_is_a_config_error() -> None:
    args = ["serve", "--jwt-secret", SECRET, "--workers", "2", "--store", "sqlite:x.db"]
    with trio.fail_after(START_S):
        result = await trio.run_process(
            [sys.executable, "-m", "app", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_env(),
        )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("enclave: configuration error:"), err
    assert "one SQLite file cannot be shared by several workers; use --store redis://" in err
    assert "Traceback" not in err


async def test_without_so_reuseport_workers_share_one_listening_socket(e2e: E2E) -> None:
    from app.server import supervise

    settings = Settings(
        host="127.0.0.1", port=0, workers=2, jwt_secret=SECRET.encode(), log_level="warning"
    )
    argv = ["serve", "--host", "127.0.0.1", "--jwt-secret", SECRET, "--log-level", "warning"]
    urls: list[str] = []
    codes: list[int] = []

    async def run() -> None:
        log = logging.getLogger("test_workers.supervisor")
        codes.append(
            await supervise(
                settings, argv, environ=_env(), log=log, on_listening=urls.append, reuse_port=False
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(START_S):
            while not urls:  # noqa: ASYNC110
                await trio.sleep(0.02)
        port = int(urls[0].rsplit(":", 1)[1])
        # Served; but which worker accepts is up to the scheduler (docs/operations.md:
        # lopsided, even all on one): only SO_REUSEPORT spreads them evenly.
        with trio.fail_after(10):
            assert len(await _epochs(e2e.endpoint("127.0.0.1", port), e2e, 10)) in (1, 2)
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's signal receiver takes it
        with trio.fail_after(10):
            while not codes:  # noqa: ASYNC110
                await trio.sleep(0.02)
    assert codes == [0]
