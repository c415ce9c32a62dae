"""``open_backend``: a backend from the store spec of the settings."""

from __future__ import annotations

from ._backend import Backend, Retention
from ._common import StoreConfigError
from ._memory import MemoryBackend
from ._sqlite import open_sqlite

__all__ = ["open_backend"]


async def open_backend(spec: str, retention: Retention) -> Backend:
    """The backend ``spec`` names: ``memory``, or ``sqlite:PATH`` (a file path).

    Raises :class:`StoreConfigError` for any other spec, an empty path, or a file that
    cannot be opened as a thread store. Cancellation: as :func:`open_sqlite`; a memory
    backend is returned whole.
    """
    if spec == "memory":
        return MemoryBackend(retention)
    scheme, colon, path = spec.partition(":")
    if scheme == "sqlite" and colon:
        if not path:
            raise StoreConfigError(
                "thread store 'sqlite:PATH' needs a path, e.g. sqlite:threads.db"
            )
        return await open_sqlite(path, retention)
    raise StoreConfigError(f"unknown thread store {spec!r}: expected 'memory' or 'sqlite:PATH'")
