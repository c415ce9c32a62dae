"""``serve()``: build the process's services, run a transport, drain on signals.

``settings.transport`` picks Hypercorn's trio worker serving the Quart-Trio app
(``asgi``) or Trio sockets with websockets' sans-IO protocol (``lean``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    import coredis

from ..agents._agent import Agent
from ..services._admission_redis import build_admission
from ..services._build import build_services
from ..services._metrics import watch_event_loop
from ..services._services import ServerLifecycle, Services
from ..services._settings import Settings
from ..threads._backend import Retention
from ..threads._logs import open_thread_logs
from ..threads._open import redis_target
from ..threads._redis import DEFAULT_PREFIX, connected_redis
from ..transports._accept_log import throttle_accept_errors
from ..transports.lean._server import serve_lean

__all__ = ["FINAL_COMMIT_S", "RunningServer", "serve"]

#: The longest a stopping server spends committing what its thread logs still hold.
FINAL_COMMIT_S = 5.0

#: The most a stopping server waits for its agent to close (its HTTP client's sockets).
AGENT_CLOSE_S = 5.0


@attrs.frozen
class RunningServer:
    """Handed to ``task_status`` once the server listens."""

    url: str
    port: int
    lifecycle: ServerLifecycle

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def shutdown(self, grace_s: float) -> None:
        """Begin the graceful shutdown a SIGTERM would."""
        self.lifecycle.begin_drain(grace_s)


async def serve(
    settings: Settings,
    *,
    services: Services | None = None,
    handle_signals: bool = False,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until shut down, then return.

    With ``handle_signals``, SIGTERM/SIGINT begin a graceful shutdown: ``/ready``
    turns 503, new handshakes get 503, runs get ``shutdown_grace_s`` to finish,
    then every connection is closed 1001; a second signal skips the grace.
    Cancellation: the server stops at once; connections are dropped without a
    close frame. Either way, an agent with an ``aclose()`` (its connections) is closed.
    ``sockets``: listening sockets to serve instead of binding ``settings.host:port``
    (a worker of ``enclave serve --workers N``); the transport closes them.
    """
    services = services or build_services(settings)
    redis = redis_target(settings.store)
    async with contextlib.AsyncExitStack() as resources:
        # One Redis client for the process, shared by the store and the admission; it
        # is closed after everything that uses it (the transports' last releases too).
        client = None
        if redis is not None:
            client = await resources.enter_async_context(connected_redis(redis[0]))
        await _serve(settings, services, client, redis, handle_signals, sockets, task_status)


async def _serve(
    settings: Settings,
    services: Services,
    client: coredis.Redis[str] | None,
    redis: tuple[str, str] | None,
    handle_signals: bool,
    sockets: Sequence[socket.socket] | None,
    task_status: trio.TaskStatus[RunningServer],
) -> None:
    threads = await open_thread_logs(
        settings.store,
        Retention(max_events=settings.history_max_events, ttl_s=settings.history_ttl_s),
        max_memory_bytes=int(settings.history_memory_mb * 2**20),
        redis=client,
        log=services.log,
    )
    prefix = redis[1] if redis is not None else DEFAULT_PREFIX
    lifecycle = ServerLifecycle(
        max_connections=settings.max_connections,
        admission=build_admission(settings, services.log, client, prefix),
        threads=threads,
    )
    store_seconds = lifecycle.metrics.store_seconds
    threads.observe = lambda op, seconds: store_seconds.labels(op).observe(seconds)
    if settings.transport == "lean":
        transport = serve_lean
    else:  # imported here: only an ASGI server loads Quart and Hypercorn
        from ..transports.asgi._hypercorn import serve_asgi as transport

    try:
        async with _agent_closed_on_exit(services.agent), trio.open_nursery() as outer:
            await outer.start(lifecycle.timer.run)
            await outer.start(lifecycle.writes.run)
            await outer.start(lifecycle.admission.run)  # shared admission's leases, its client
            # The thread logs' writer: started first, stopped last (after a final commit).
            await outer.start(threads.run)
            outer.start_soon(watch_event_loop, lifecycle.metrics)  # enclave_event_loop_lag_seconds
            if handle_signals:
                outer.start_soon(
                    _watch_signals, lifecycle, settings.shutdown_grace_s, outer, services.log
                )
            # Out of file descriptors, accept() fails and is retried every 0.1 s: log it rarely.
            with throttle_accept_errors():
                async with trio.open_nursery() as inner:
                    url: str = await inner.start(
                        partial(transport, sockets=sockets), services, lifecycle
                    )
                    port = int(url.rsplit(":", 1)[1])
                    services.log.info(
                        "listening on %s (websocket path %s, thread store %s)",
                        url,
                        settings.path,
                        settings.store,
                    )
                    task_status.started(RunningServer(url=url, port=port, lifecycle=lifecycle))
            await threads.flush()
            services.log.info("stopped")
            outer.cancel_scope.cancel()
    finally:
        # A hard stop too: what the logs were given (the runs it cut included) is kept.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + FINAL_COMMIT_S
            await threads.flush()
        await threads.aclose()


@asynccontextmanager
async def _agent_closed_on_exit(agent: Agent) -> AsyncIterator[None]:
    """Await the agent's ``aclose()``, if it has one, however the block ends."""
    try:
        yield
    finally:
        aclose = getattr(agent, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(AGENT_CLOSE_S):
                await aclose()


async def _watch_signals(
    lifecycle: ServerLifecycle, grace_s: float, server: trio.Nursery, log: logging.Logger
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if lifecycle.draining.is_set():
                log.warning("%s again: stopping now without waiting for the grace period", name)
                server.cancel_scope.cancel()
                return
            log.info(
                "%s: draining %d connection(s), grace %.1f s",
                name,
                lifecycle.open_connections,
                grace_s,
            )
            lifecycle.begin_drain(grace_s)
