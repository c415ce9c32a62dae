"""Threads that outlive a connection: every thread's event log and its storage engines.

- ``_backend``: what a storage engine does (the interface both backends implement).
- ``_memory``: the in-memory engine.
- ``_logs``: numbering, group commit, write-before-send and live delivery.
"""

from ._backend import Backend as Backend
from ._backend import Entry as Entry
from ._backend import Retention as Retention
from ._backend import ThreadHead as ThreadHead
from ._backend import ThreadSummary as ThreadSummary
from ._logs import Follower as Follower
from ._logs import ThreadLog as ThreadLog
from ._logs import ThreadLogs as ThreadLogs
from ._logs import UserThreads as UserThreads
from ._memory import MemoryBackend as MemoryBackend

__all__ = [
    "Backend",
    "Entry",
    "Follower",
    "MemoryBackend",
    "Retention",
    "ThreadHead",
    "ThreadLog",
    "ThreadLogs",
    "ThreadSummary",
    "UserThreads",
]
