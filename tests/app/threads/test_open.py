"""``open_backend``: a backend from its spec, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from app.testing import RedisServer, free_port
from app.threads import (
    MemoryBackend,
    RedisBackend,
    Retention,
    SQLiteBackend,
    StoreConfigError,
    open_backend,
)


async def test_memory() -> None:
    backend = await open_backend("memory", Retention(max_events=3))
    assert isinstance(backend, MemoryBackend)
    assert backend.retention == Retention(max_events=3)
    await backend.aclose()


async def test_sqlite_path(tmp_path: Path) -> None:
    path = tmp_path / "data" / "threads.db"
    backend = await open_backend(f"sqlite:{path}", Retention(ttl_s=60.0))
    try:
        assert isinstance(backend, SQLiteBackend)
        assert backend.retention == Retention(ttl_s=60.0)
        assert path.exists()
    finally:
        await backend.aclose()


async def test_redis_url(redis: RedisServer) -> None:
    backend = await open_backend(redis.url, Retention(max_events=5))
    try:
        assert isinstance(backend, RedisBackend)
        assert backend.retention == Retention(max_events=5)
        assert backend.prefix == "enclave"
        assert len(backend.epoch) == 32
    finally:
        await backend.aclose()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_an_unreachable_redis_is_a_clear_error(scheme: str) -> None:
    url = f"{scheme}://:hunter2@127.0.0.1:{free_port()}/0"
    with trio.fail_after(10), pytest.raises(StoreConfigError) as caught:
        await open_backend(url, Retention())
    message = str(caught.value)
    assert message.startswith(f"cannot reach Redis at {scheme}://:***@127.0.0.1:")
    assert "hunter2" not in message


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_redis_needs_a_host(scheme: str) -> None:
    with pytest.raises(StoreConfigError, match="needs a host"):
        await open_backend(f"{scheme}://", Retention())


@pytest.mark.parametrize(
    "spec", ["", "Memory", "memory:", "sqlite", "redis:localhost", "redis", "x:y", "http://h"]
)
async def test_an_unknown_spec_is_refused(spec: str) -> None:
    with pytest.raises(
        StoreConfigError, match="expected 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'"
    ):
        await open_backend(spec, Retention())


async def test_sqlite_needs_a_path() -> None:
    with pytest.raises(StoreConfigError, match="needs a path"):
        await open_backend("sqlite:", Retention())


def test_the_error_is_a_value_error() -> None:
    assert issubclass(StoreConfigError, ValueError)
