"""The thread store: every user's threads as event logs that clients can page and resume.

- ``_backend``: the interface of a storage engine (``Backend``) and its values.
- ``_memory``: ``MemoryBackend``, the logs in dicts (lost with the process).
- ``_sqlite``: ``SQLiteBackend`` and ``open_sqlite``, the logs in one SQLite file.
- ``_open``: ``open_backend``, a backend from a spec (``memory``, ``sqlite:PATH``).
- ``_common``: the checks both backends share and ``StoreConfigError``.
- ``_logs``: ``ThreadLogs``, numbering, group commit, write-before-send and live
  delivery on top of a backend; ``UserThreads``, the logs as one user sees them.
"""

from ._backend import Backend as Backend
from ._backend import Entry as Entry
from ._backend import Retention as Retention
from ._backend import ThreadHead as ThreadHead
from ._backend import ThreadSummary as ThreadSummary
from ._common import StoreConfigError as StoreConfigError
from ._logs import Follower as Follower
from ._logs import ThreadLog as ThreadLog
from ._logs import ThreadLogs as ThreadLogs
from ._logs import UserThreads as UserThreads
from ._logs import open_thread_logs as open_thread_logs
from ._memory import MemoryBackend as MemoryBackend
from ._open import open_backend as open_backend
from ._sqlite import SQLiteBackend as SQLiteBackend
from ._sqlite import open_sqlite as open_sqlite

__all__ = [
    "Backend",
    "Entry",
    "Follower",
    "MemoryBackend",
    "Retention",
    "SQLiteBackend",
    "StoreConfigError",
    "ThreadHead",
    "ThreadLog",
    "ThreadLogs",
    "ThreadSummary",
    "UserThreads",
    "open_backend",
    "open_sqlite",
    "open_thread_logs",
]
