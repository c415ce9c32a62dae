"""The throttle on accept-failure logging (out of file descriptors).

The end-to-end check -- a server process at its open-file limit logs one line, not ten
tracebacks a second -- is in ``tests/security/test_faults.py``.
"""

from __future__ import annotations

import logging
import sys

from app.transports._accept_log import ACCEPT_LOGGER, AcceptErrorThrottle, throttle_accept_errors


def test_accept_error_throttle_passes_one_record_per_interval() -> None:
    now = [0.0]
    throttle = AcceptErrorThrottle(10.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            "trio.serve_listeners", logging.ERROR, __file__, 1, "accept %s", ("EMFILE",), exc_info
        )

    first = record()
    assert throttle.filter(first)
    assert (first.getMessage(), first.exc_info) == ("accept EMFILE", None)
    now[0] = 5.0
    assert not throttle.filter(record())
    assert not throttle.filter(record())
    now[0] = 10.0
    later = record()
    assert throttle.filter(later)
    assert later.getMessage() == "accept EMFILE (2 more since the last report)"
    now[0] = 25.0
    quiet = record()
    assert throttle.filter(quiet)
    assert quiet.getMessage() == "accept EMFILE"


def test_throttle_accept_errors_is_removed_on_exit() -> None:
    logger = logging.getLogger(ACCEPT_LOGGER)
    with throttle_accept_errors(1.0) as throttle:
        assert throttle in logger.filters
    assert throttle not in logger.filters
