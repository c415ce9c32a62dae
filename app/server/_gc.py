"""The garbage collector of a serving process: rare, short collections.

With CPython's default thresholds (700, 10, 10), a server holding 1,000 connections
ran a full collection every few seconds, and each one walked every live object of
every connection: 200-280 ms with the whole event loop stopped, which set every
user's p99 (docs/security.md, "Findings"). Nearly all the objects a turn allocates
are freed by reference counting, so collections can be far rarer:

- ``gc.freeze()`` after start-up moves the imported modules, classes and settings
  (about 50,000 objects) out of every later collection;
- a young generation of 50,000 objects makes the collector run only after that many
  allocations survive, instead of every 700;
- the older generations follow 20 and 100 of those, so a full collection is rare.

Rare young collections have a price: a reference cycle that outlives two of them
reaches the oldest generation, which is only collected in full, and a full collection
then almost never starts on its own (none in a 240 s soak; the RSS rose about
94 KiB/min). :func:`collect_periodically` runs one every
:data:`FULL_COLLECTION_INTERVAL_S` instead: one pause (about 200 ms with 1,000
connections) every five minutes, and the garbage of five minutes at most.

Called by the ``enclave serve`` process only: a program that embeds :func:`serve`
owns its interpreter's collector.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

import trio

__all__ = [
    "FULL_COLLECTION_INTERVAL_S",
    "SERVING_THRESHOLDS",
    "collect_periodically",
    "tune_gc_for_serving",
]

SERVING_THRESHOLDS: Final = (50_000, 20, 100)
FULL_COLLECTION_INTERVAL_S: Final = 300.0


def tune_gc_for_serving() -> None:
    """Collect once, freeze what start-up left, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)


async def collect_periodically(
    interval_s: float = FULL_COLLECTION_INTERVAL_S, log: logging.Logger | None = None
) -> None:
    """A full collection every ``interval_s``, forever.

    Cancellation: stops at once (it only ever waits in ``trio.sleep``).
    """
    while True:
        await trio.sleep(interval_s)
        started = time.perf_counter()
        freed = gc.collect()
        if log is not None:
            ms = (time.perf_counter() - started) * 1000
            log.debug("full garbage collection: %d objects freed in %.0f ms", freed, ms)
