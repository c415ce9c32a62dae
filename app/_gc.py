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

Called by the ``enclave serve`` process only: a program that embeds :func:`serve`
owns its interpreter's collector.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["SERVING_THRESHOLDS", "tune_gc_for_serving"]

SERVING_THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc_for_serving() -> None:
    """Collect once, freeze what start-up left, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
