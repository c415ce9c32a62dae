"""The thread store: every user's threads as event logs that clients can page and resume.

- ``_backend``: the interface of a storage engine (``Backend``) and its values.
- ``_memory``: ``MemoryBackend``, the logs in dicts (lost with the process).
- ``_sqlite``: ``SQLiteBackend`` and ``open_sqlite``, the logs in one SQLite file.
- ``_open``: ``open_backend``, a backend from a spec (``memory``, ``sqlite:PATH``).
- ``_common``: the checks both backends share and ``StoreConfigError``.
"""

from ._backend import Backend as Backend
from ._backend import Entry as Entry
from ._backend import Retention as Retention
from ._backend import ThreadHead as ThreadHead
from ._backend import ThreadSummary as ThreadSummary
from ._common import StoreConfigError as StoreConfigError
from ._memory import MemoryBackend as MemoryBackend
from ._open import open_backend as open_backend
from ._sqlite import SQLiteBackend as SQLiteBackend
from ._sqlite import open_sqlite as open_sqlite

__all__ = [
    "Backend",
    "Entry",
    "MemoryBackend",
    "Retention",
    "SQLiteBackend",
    "StoreConfigError",
    "ThreadHead",
    "ThreadSummary",
    "open_backend",
    "open_sqlite",
]
