"""``enclave serve --workers N``: a supervisor of N server processes on one port.

One Trio process uses one core. The supervisor is a small Trio program that starts N
workers (fresh interpreters running ``python -m app serve ... --workers 1``), each the
ordinary single-process server with ``ENCLAVE_WORKER_INDEX`` in its environment.

- **One port.** Where the kernel has ``SO_REUSEPORT`` every worker binds a listening
  socket of its own on the port and the kernel spreads new connections over them (by
  a hash of the connection's addresses: even, whatever each worker is busy with). The
  supervisor picks the port once (``--port 0`` included) by binding, without listening,
  a ``SO_REUSEPORT`` socket it holds while it runs. Elsewhere the supervisor listens
  itself and every worker accepts on that one inherited socket.
- **Readiness and a lifeline.** Each worker gets one end of a socket pair: it writes
  ``ready`` once it listens, and a worker that reads end-of-file there (its
  supervisor is gone, even SIGKILLed) drains as on SIGTERM. The supervisor logs
  ``listening on URL (N workers)`` once every worker is ready.
- **Restarts.** A worker that exits while nothing asked it to is started again after
  a :class:`Backoff` delay. One that fails before it first listens stops everything:
  that is a configuration or port problem, not a crash to retry.
- **Signals.** SIGTERM/SIGINT are forwarded to every worker at once (each drains:
  ``/ready`` 503, runs get the grace, 1001 closes); a second one is forwarded too (no
  grace). Workers run in their own process group, so a terminal's Ctrl-C reaches
  them only through the supervisor, once. Nothing is restarted after the first
  signal; a worker still running ``grace + send timeout +`` :data:`STOP_MARGIN_S`
  later is killed. The exit code is 0 when every worker exited 0, else 1.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Final

import attrs
import trio

from ..services._settings import Settings

__all__ = [
    "START_S",
    "STOP_MARGIN_S",
    "WORKER_INDEX_ENV",
    "Backoff",
    "WorkerRole",
    "supervise",
]

#: The worker's index, 0..N-1 (also in its log lines).
WORKER_INDEX_ENV: Final = "ENCLAVE_WORKER_INDEX"
#: The fd of the worker's end of its socket pair with the supervisor.
WORKER_CHANNEL_ENV: Final = "ENCLAVE_WORKER_CHANNEL_FD"
#: The fd of the listening socket the worker inherited (without ``SO_REUSEPORT``).
WORKER_LISTEN_ENV: Final = "ENCLAVE_WORKER_LISTEN_FD"
#: Longest a worker may take to listen (imports, the store, the agent).
START_S: Final = 60.0
#: Beyond grace and send timeout: what a draining worker may take to close and commit.
STOP_MARGIN_S: Final = 20.0
#: Longest the supervisor waits for a worker it SIGKILLed.
KILL_WAIT_S: Final = 5.0
_READY: Final = b"ready\n"


@attrs.frozen
class Backoff:
    """The wait before restarting a worker that died: doubling, capped, reset by uptime."""

    initial_s: float = 0.5
    max_s: float = 30.0
    #: A worker that stayed up this long starts the doubling over.
    reset_after_s: float = 60.0

    def next_delay(self, previous_s: float, uptime_s: float) -> float:
        """The wait before the next start of a worker that exited after ``uptime_s``;
        ``previous_s`` is the wait before its last start (0 for the first one)."""
        if previous_s <= 0 or uptime_s >= self.reset_after_s:
            return self.initial_s
        return min(previous_s * 2, self.max_s)


@attrs.frozen
class WorkerRole:
    """What a worker process learns from its environment (set by the supervisor)."""

    index: int
    channel_fd: int
    listen_fd: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role if this process is a worker of a supervisor, else None."""
        if WORKER_INDEX_ENV not in environ or WORKER_CHANNEL_ENV not in environ:
            return None
        listen = environ.get(WORKER_LISTEN_ENV)
        return cls(
            index=int(environ[WORKER_INDEX_ENV]),
            channel_fd=int(environ[WORKER_CHANNEL_ENV]),
            listen_fd=int(listen) if listen else None,
        )

    def listening_sockets(self, settings: Settings) -> list[socket.socket]:
        """This worker's listening socket: inherited, or its own ``SO_REUSEPORT`` one."""
        if self.listen_fd is not None:
            return [socket.socket(fileno=self.listen_fd)]
        sock = bind_socket(settings.host, settings.port, reuse_port=True)
        try:
            sock.listen(settings.backlog)
        except BaseException:
            sock.close()
            raise
        return [sock]

    def tag_logs(self) -> None:
        """Name this worker in every log record (``trio_enclave[worker 1]``)."""
        tag = _WorkerTag(self.index)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)

    async def report_and_watch(self, on_orphaned: Callable[[], None]) -> None:
        """Tell the supervisor this worker listens; call ``on_orphaned`` when it is gone.

        Cancellation: stops watching; the channel is closed.
        """
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=self.channel_fd))
        with sock:
            try:
                await sock.send(_READY)
                while await sock.recv(64):
                    pass  # the supervisor sends nothing: this waits for its end
            except OSError:
                pass
            on_orphaned()


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "worker_tagged", False):
            record.name = f"{record.name}[worker {self.index}]"
            record.worker_tagged = True
        return True


def reuse_port_available() -> bool:
    """Whether this kernel balances connections over ``SO_REUSEPORT`` sockets."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    return True


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (the first address ``host`` resolves to)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as trio.open_tcp_listeners: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@attrs.define(eq=False)
class _Supervisor:
    """The state of one :func:`supervise` call, owned by its nursery."""

    settings: Settings
    command: list[str]
    environ: Mapping[str, str]
    listen_fd: int | None
    log: logging.Logger
    backoff: Backoff
    processes: list[trio.Process | None]
    ready: list[bool]
    all_ready: trio.Event = attrs.field(factory=trio.Event)
    stopping: trio.Event = attrs.field(factory=trio.Event)
    codes: list[int | None] = attrs.field(factory=list)
    failed: int | None = None

    def stop(self, signum: int) -> None:
        """Forward ``signum`` to every worker; start no more."""
        self.stopping.set()
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    def kill_all(self) -> None:
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.kill()

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping.is_set():
                self.log.warning("%s again: forwarded, workers stop without the grace", name)
            else:
                self.log.info("%s: forwarded to %d worker(s)", name, len(self.processes))
            self.stop(signum)

    async def kill_after_deadline(self) -> None:
        await self.stopping.wait()
        settings = self.settings
        await trio.sleep(settings.shutdown_grace_s + settings.send_timeout_s + STOP_MARGIN_S)
        self.log.error("workers still running after the shutdown bound: killing them")
        self.kill_all()

    async def announce(self, url: str, on_listening: Callable[[str], None] | None) -> None:
        with trio.move_on_after(START_S):
            await self.all_ready.wait()
            self.log.info("listening on %s (%d workers)", url, len(self.processes))
            if on_listening is not None:
                on_listening(url)
            return
        if self.stopping.is_set():
            return  # stopped while starting: nothing to announce
        self.log.error("the workers did not all listen within %.0f s: stopping", START_S)
        self.failed = 1
        self.stop(signal.SIGTERM)

    async def keep_running(self, index: int) -> None:
        """Run worker ``index`` until the supervisor stops; restart it when it dies.

        Cancellation: the worker is killed (and waited for, bounded).
        """
        delay = 0.0
        while not self.stopping.is_set():
            started = trio.current_time()
            code = await self._run_once(index)
            self.codes[index] = code
            if self.stopping.is_set():
                return
            if not self.all_ready.is_set():
                self.log.error("worker %d failed to start (%s)", index, _exit_text(code))
                self.failed = code if code > 0 else 1
                self.stop(signal.SIGTERM)
                return
            delay = self.backoff.next_delay(delay, trio.current_time() - started)
            self.log.warning(
                "worker %d exited unexpectedly (%s): restarting in %.1f s",
                index,
                _exit_text(code),
                delay,
            )
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _run_once(self, index: int) -> int:
        ours, theirs = socket.socketpair()
        env = {**self.environ, WORKER_INDEX_ENV: str(index)}
        env[WORKER_CHANNEL_ENV] = str(theirs.fileno())
        fds = [theirs.fileno()]
        if self.listen_fd is not None:
            env[WORKER_LISTEN_ENV] = str(self.listen_fd)
            fds.append(self.listen_fd)
        try:
            process = await trio.lowlevel.open_process(
                self.command,
                env=env,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C reaches workers once: forwarded
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.processes[index] = process
        self.log.info("worker %d started (pid %d)", index, process.pid)
        if self.stopping.is_set():  # the signal came while it was being started
            process.send_signal(signal.SIGTERM)
        channel = trio.socket.from_stdlib_socket(ours)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._await_ready, index, channel)
                code = await process.wait()
                nursery.cancel_scope.cancel()
            return code
        finally:
            channel.close()
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(KILL_WAIT_S):
                    await process.wait()

    async def _await_ready(self, index: int, channel: trio.socket.SocketType) -> None:
        if await channel.recv(len(_READY)) != _READY:
            return  # it exited first: its exit is what counts
        self.ready[index] = True
        if all(self.ready):
            self.all_ready.set()
        # The channel stays open (unread) while the worker runs: its lifeline.
        await trio.sleep_forever()


async def supervise(
    settings: Settings,
    argv: Sequence[str],
    *,
    environ: Mapping[str, str],
    log: logging.Logger,
    on_listening: Callable[[str], None] | None = None,
    backoff: Backoff | None = None,
    reuse_port: bool | None = None,
) -> int:
    """Run ``settings.workers`` workers of ``enclave serve`` (``argv``) on one port; the exit code.

    Each worker runs ``python -m app *argv --workers 1 --port PORT --store STORE`` with
    ``environ`` and its index. ``on_listening(url)`` is called once every worker
    listens. ``backoff``: the restart delays (default :class:`Backoff`). ``reuse_port``
    None: ``SO_REUSEPORT`` where the kernel has it. Returns after SIGTERM/SIGINT once
    every worker exited: 0 if all exited 0, else 1 (or the exit code of a worker that
    failed to start).
    Cancellation: every worker is killed and waited for (bounded); the port is released.
    """
    count = settings.workers
    if reuse_port is None:
        reuse_port = reuse_port_available()
    if settings.store == "memory":
        log.warning(
            "--workers %d with --store memory: each worker keeps its own threads"
            " (a resume that lands on another worker gets epoch_changed)",
            count,
        )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # SO_REUSEPORT: bound, not listening (no connection lands on it); it holds the port.
        held = bind_socket(settings.host, settings.port, reuse_port=reuse_port)
        try:
            if not reuse_port:
                held.listen(settings.backlog)
            port = held.getsockname()[1]
            log.info(
                "starting %d workers on port %d (%s)",
                count,
                port,
                "SO_REUSEPORT" if reuse_port else "one shared listening socket",
            )
            command = [
                sys.executable,
                "-m",
                "app",
                *argv,
                "--workers",
                "1",
                "--port",
                str(port),
                "--store",
                settings.store,
            ]
            supervisor = _Supervisor(
                settings=settings,
                command=command,
                environ=environ,
                listen_fd=None if reuse_port else held.fileno(),
                log=log,
                backoff=backoff or Backoff(),
                processes=[None] * count,
                ready=[False] * count,
                codes=[None] * count,
            )
            async with trio.open_nursery() as service:
                service.start_soon(supervisor.watch_signals, signals)
                service.start_soon(supervisor.kill_after_deadline)
                service.start_soon(supervisor.announce, _url(held), on_listening)
                async with trio.open_nursery() as workers:
                    for index in range(count):
                        workers.start_soon(supervisor.keep_running, index)
                service.cancel_scope.cancel()
        finally:
            held.close()
    if supervisor.failed is not None:
        return supervisor.failed
    log.info("stopped: worker exit codes %s", supervisor.codes)
    return 0 if all(code == 0 for code in supervisor.codes) else 1
