"""Hypercorn serving the ASGI app, and a Hypercorn bug on one connection kept from
stopping the whole ASGI server.

Hypercorn's trio worker runs each connection in ``trio.serve_listeners``' handler
nursery, so an exception escaping its per-connection ``TCPServer.run`` ends the
listener and every other connection with it. Two such bugs are reachable by any
client: h11 raising on bytes after an upgrade request in the same read (Hypercorn
issue 225, no token needed), and a write racing with Hypercorn's unlocked
half-close (``BusyResourceError``). :func:`contain_connection_errors` makes the
worker build :class:`ContainedTCPServer` instead, which ends only that connection.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Sequence
from functools import partial

import hypercorn.trio.run as hypercorn_run
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

from ...services._services import ServerLifecycle, Services
from ...services._settings import Settings
from ...session._session import CLOSE_TIMEOUT_S
from .._conformance import ECHO_MAX_MESSAGE_BYTES
from ._server import create_app

__all__ = ["ContainedTCPServer", "contain_connection_errors", "hypercorn_config", "serve_asgi"]

FALLBACK_LOGGER = "trio_enclave.hypercorn"


class ContainedTCPServer(TCPServer):
    """Hypercorn's per-connection server; an exception ends this connection only."""

    async def run(self) -> None:
        """Serve the connection; log and swallow what escapes Hypercorn.

        Cancellation: propagates (``except*`` lets ``Cancelled`` through); Hypercorn's
        own ``finally`` has closed the socket by then.
        """
        try:
            await super().run()
        except* Exception as group:
            log = self.config.errorlog
            if not isinstance(log, logging.Logger):
                log = logging.getLogger(FALLBACK_LOGGER)
            # One line, no traceback: a client can trigger this at will.
            log.warning(
                "a connection ended on a Hypercorn error, contained: %s",
                "; ".join(repr(exc) for exc in group.exceptions),
            )


def contain_connection_errors() -> None:
    """Make Hypercorn's trio worker use :class:`ContainedTCPServer`. Idempotent.

    The worker looks the class up in its module when it starts serving; there is no
    parameter for it. The replacement is a subclass with the same behaviour for
    every connection that does not hit a Hypercorn bug.
    """
    # Not re-exported by that module, so mypy does not know the name; it is there.
    hypercorn_run.TCPServer = ContainedTCPServer  # type: ignore[attr-defined]


def hypercorn_config(
    settings: Settings, log: logging.Logger, sockets: Sequence[socket.socket] | None = None
) -> Config:
    """Hypercorn's config; ``sockets`` (listening, now owned by Hypercorn) instead of a bind."""
    config = Config()
    if sockets is None:
        config.bind = [f"{settings.host}:{settings.port}"]
    else:  # Hypercorn wraps each fd in a socket of its own, which closes it
        config.bind = [f"fd://{sock.detach()}" for sock in sockets]
    # Hypercorn's default of 100 overflows when hundreds of users connect at once.
    config.backlog = settings.backlog
    config.accesslog = None
    config.errorlog = log.getChild("hypercorn")
    # Hypercorn counts characters and closes 1009 without a reason; the session
    # counts UTF-8 bytes and says ``message_too_big``. Hypercorn's cap stays as a
    # backstop at the most bytes a message within the limit can have in characters.
    config.websocket_max_message_size = settings.max_message_bytes * 4
    if settings.conformance_echo:  # the echo route's messages (app/transports/_conformance.py)
        config.websocket_max_message_size = max(
            config.websocket_max_message_size, ECHO_MAX_MESSAGE_BYTES
        )
    # No Hypercorn pings: its trio worker half-closes a failed connection without its
    # send lock, and a ping written at that moment raises BusyResourceError out of
    # Hypercorn's serve(), stopping the whole server (one bad frame right after the
    # upgrade did it within 15 tries). Hypercorn ignores pongs anyway; the session's
    # idle timeout closes a silent peer, and the read timeout drops it after that.
    config.websocket_ping_interval = None
    config.read_timeout = math.ceil(settings.idle_timeout_s + settings.pong_timeout_s)
    config.graceful_timeout = CLOSE_TIMEOUT_S
    return config


async def serve_asgi(
    services: Services,
    lifecycle: ServerLifecycle,
    *,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn serving the Quart-Trio app; hands ``task_status`` the URL; returns after a drain.

    ``sockets``: listening sockets to serve instead of binding ``settings.host:port``.

    Cancellation: stops at once; connections are dropped without a close frame.
    """
    settings = services.settings
    app = create_app(services, lifecycle)
    config = hypercorn_config(settings, services.log, sockets)
    contain_connection_errors()

    async def shutdown_trigger() -> None:
        await lifecycle.draining.wait()
        # Sessions close themselves 1001 after the grace; this bounds the wait.
        limit = lifecycle.grace_deadline + settings.send_timeout_s + CLOSE_TIMEOUT_S
        with trio.move_on_at(limit):
            await lifecycle.wait_all_closed()

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)
        )
        task_status.started(binds[0])
        await shutdown_trigger()
        # Every session has closed (or the bound passed). Hypercorn would still
        # wait up to graceful_timeout for its per-WebSocket ping tasks to wake.
        nursery.cancel_scope.cancel()
