"""The lean transport's accept loop: one connection per pass of the scheduler, one task each.

:func:`trio.serve_listeners` closes every connection a second time after the handler's
own close, forcefully: a cancelled scope and a ``Cancelled`` raised and caught, per
connection. Under a connect flood that was about a tenth of the server's CPU per
refused handshake (``bench``'s attacks). Here the handler owns its socket's close and
``accept()`` is a plain non-blocking call. As in Trio's loop, the loop yields once per
connection accepted: connects that arrive together are taken one per pass of the
scheduler, so the users already connected never wait behind dozens of handshakes run
back to back.

Capacity errors are handled as :func:`trio.serve_listeners` does, on its logger (so
:mod:`app.transports._accept_log` throttles both transports alike): ``EMFILE``, ``ENFILE``,
``ENOMEM`` and ``ENOBUFS`` are logged and retried after :data:`CAPACITY_RETRY_S`,
while the waiting clients stay in the listen backlog. Any other error ends the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

import trio

from .._accept_log import ACCEPT_LOGGER

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "CAPACITY_RETRY_S",
    "accept_loop",
    "raw_listener",
]

#: accept(2) errors that mean "out of a resource for now": retried, not fatal.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds between two attempts while accept(2) fails for capacity.
CAPACITY_RETRY_S: Final = 0.1

Handler = Callable[[socket.socket, Any], Awaitable[None]]


def raw_listener(listener: trio.SocketListener) -> socket.socket:
    """The listening socket of ``listener``, non-blocking, as a stdlib socket.

    ``listener`` no longer owns it: the returned socket must be closed (:func:`accept_loop`
    does).
    """
    raw = socket.socket(fileno=listener.socket.detach())
    raw.setblocking(False)
    return raw


async def accept_loop(listener: socket.socket, handle: Handler, handlers: trio.Nursery) -> NoReturn:
    """Accept on ``listener`` forever; ``handle(conn, address)`` runs in ``handlers`` for each.

    ``handle`` owns ``conn`` and must close it. Cancellation: stops accepting and closes
    ``listener``; the handlers run on in their own nursery.
    """
    try:
        while True:
            try:
                conn, address = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                logging.getLogger(ACCEPT_LOGGER).error(
                    "accept returned %s (%s); retrying in %s seconds",
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    CAPACITY_RETRY_S,
                )
                await trio.sleep(CAPACITY_RETRY_S)
                continue
            handlers.start_soon(handle, conn, address)
            # One connection per pass of the scheduler: a burst of connects is spread
            # out, so users already connected never wait behind dozens of handshakes
            # run back to back (32 at once cost every user 40 ms in bench attacks).
            await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.notify_closing(listener)
        listener.close()
