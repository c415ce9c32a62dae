"""``open_backend``: a backend from the store spec of the settings."""

from __future__ import annotations

import urllib.parse

from ._backend import Backend, Retention
from ._common import StoreConfigError
from ._memory import MemoryBackend
from ._redis import DEFAULT_PREFIX, open_redis
from ._sqlite import open_sqlite

__all__ = ["open_backend", "redis_target"]

EXPECTED = "expected 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'"


async def open_backend(spec: str, retention: Retention) -> Backend:
    """The backend ``spec`` names: ``memory``, ``sqlite:PATH`` (a file path), or a Redis
    URL, ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=P]`` (``rediss://`` for TLS;
    ``prefix``, default ``enclave``, starts every key: several deployments on one Redis).

    Raises :class:`StoreConfigError` for any other spec, an empty path, a file that
    cannot be opened as a thread store, or a Redis that cannot be reached. A Redis
    backend must be closed in the task that opened it (see :func:`open_redis`).
    Cancellation: as :func:`open_sqlite` / :func:`open_redis`; a memory backend is
    returned whole.
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
    redis = redis_target(spec)
    if redis is not None:
        return await open_redis(redis[0], retention, prefix=redis[1])
    raise StoreConfigError(f"unknown thread store {spec!r}: {EXPECTED}")


def redis_target(spec: str) -> tuple[str, str] | None:
    """``(url, prefix)`` of a ``redis://`` / ``rediss://`` store spec, ``?prefix=`` taken out
    of the URL (default ``enclave``); None for another kind of spec.

    Raises :class:`StoreConfigError` for a URL with no host or a bad prefix.
    """
    scheme, _, path = spec.partition(":")
    if scheme not in ("redis", "rediss") or not path.startswith("//"):
        return None
    if len(path) <= 2:
        raise StoreConfigError(
            f"thread store '{scheme}://' needs a host, e.g. {scheme}://localhost:6379/0"
        )
    parts = urllib.parse.urlsplit(spec)
    query = urllib.parse.parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[-1]
    if not prefix or ":" in prefix:
        raise StoreConfigError(f"a Redis key prefix has no ':' and is not empty: {prefix!r}")
    rest = urllib.parse.urlencode(query, doseq=True)
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefix
