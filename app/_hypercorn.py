"""Keep a Hypercorn bug on one connection from stopping the whole ASGI server.

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

import hypercorn.trio.run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["ContainedTCPServer", "contain_connection_errors"]

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
