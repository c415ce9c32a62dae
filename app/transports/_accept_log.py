"""Bounded logging of accept(2) failures while the process is out of file descriptors.

The ASGI transport accepts through :func:`trio.serve_listeners`, the lean transport
through :func:`app.transports.lean._accept.accept_loop`; on ``EMFILE``, ``ENFILE``, ``ENOMEM`` or
``ENOBUFS`` both sleep 0.1 s and retry -- the right answer (no busy loop, no crash;
clients wait in the listen backlog) -- and both log an ERROR on the same logger on
every retry (Trio's with a traceback): ten a second for as long as the condition
lasts. :class:`AcceptErrorThrottle` lets one record through per interval, without the
traceback, saying how many it held back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Final

__all__ = [
    "ACCEPT_LOGGER",
    "ACCEPT_LOG_INTERVAL_S",
    "AcceptErrorThrottle",
    "throttle_accept_errors",
]

#: The logger :func:`trio.serve_listeners` and the lean accept loop report accept failures on.
ACCEPT_LOGGER: Final = "trio.serve_listeners"
#: At most one accept-failure record per this many seconds.
ACCEPT_LOG_INTERVAL_S: Final = 10.0


class AcceptErrorThrottle(logging.Filter):
    """A filter passing at most one record per ``interval_s``; the others are counted.

    One instance per running server, added to :data:`ACCEPT_LOGGER` by ``serve()``
    and removed when it returns.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self._interval_s
        message = record.getMessage()
        if self._held:
            message += f" ({self._held} more since the last report)"
        record.msg, record.args = message, ()
        record.exc_info = record.exc_text = None
        self._held = 0
        return True


@contextlib.contextmanager
def throttle_accept_errors(
    interval_s: float = ACCEPT_LOG_INTERVAL_S,
) -> Iterator[AcceptErrorThrottle]:
    """Throttle :data:`ACCEPT_LOGGER` for the duration of the block."""
    logger = logging.getLogger(ACCEPT_LOGGER)
    throttle = AcceptErrorThrottle(interval_s)
    logger.addFilter(throttle)
    try:
        yield throttle
    finally:
        logger.removeFilter(throttle)
