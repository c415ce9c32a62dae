"""The thread store: every user's threads as event logs that clients can page and resume.

- ``_backend``: the interface of a storage engine (``Backend``) and its values.
- ``_memory``: ``MemoryBackend``, the logs in dicts (lost with the process).
- ``_sqlite``: ``SQLiteBackend`` and ``open_sqlite``, the logs in one SQLite file.
- ``_redis``: ``RedisBackend`` and ``open_redis``, the logs in Redis Streams, shared by
  several server processes (claims, fencing, blocking reads); ``_redis_lua``, its scripts.
- ``_open``: ``open_backend``, a backend from a spec (``memory``, ``sqlite:PATH``,
  ``redis://…``).
- ``_common``: the checks the backends share, ``StoreConfigError`` and the ``StoreError``
  family of refused writes.
- ``_logs``: ``ThreadLogs``, numbering, group commit, write-before-send and live
  delivery on top of a backend; ``UserThreads``, the logs as one user sees them.
"""

from ._backend import Backend as Backend
from ._backend import Entry as Entry
from ._backend import Retention as Retention
from ._backend import ThreadHead as ThreadHead
from ._backend import ThreadSummary as ThreadSummary
from ._common import NotOwner as NotOwner
from ._common import SeqConflict as SeqConflict
from ._common import StoreConfigError as StoreConfigError
from ._common import StoreError as StoreError
from ._common import StoreLost as StoreLost
from ._logs import Follower as Follower
from ._logs import ThreadLog as ThreadLog
from ._logs import ThreadLogs as ThreadLogs
from ._logs import UserThreads as UserThreads
from ._logs import open_thread_logs as open_thread_logs
from ._memory import MemoryBackend as MemoryBackend
from ._open import open_backend as open_backend
from ._redis import RedisBackend as RedisBackend
from ._redis import open_redis as open_redis
from ._sqlite import SQLiteBackend as SQLiteBackend
from ._sqlite import open_sqlite as open_sqlite

__all__ = [
    "Backend",
    "Entry",
    "Follower",
    "MemoryBackend",
    "NotOwner",
    "RedisBackend",
    "Retention",
    "SQLiteBackend",
    "SeqConflict",
    "StoreConfigError",
    "StoreError",
    "StoreLost",
    "ThreadHead",
    "ThreadLog",
    "ThreadLogs",
    "ThreadSummary",
    "UserThreads",
    "open_backend",
    "open_redis",
    "open_sqlite",
    "open_thread_logs",
]
