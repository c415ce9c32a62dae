"""``open_backend``: a backend from its spec, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.threads import MemoryBackend, Retention, SQLiteBackend, StoreConfigError, open_backend


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


@pytest.mark.parametrize("spec", ["", "Memory", "memory:", "sqlite", "redis://localhost", "x:y"])
async def test_an_unknown_spec_is_refused(spec: str) -> None:
    with pytest.raises(StoreConfigError, match="expected 'memory' or 'sqlite:PATH'"):
        await open_backend(spec, Retention())


async def test_sqlite_needs_a_path() -> None:
    with pytest.raises(StoreConfigError, match="needs a path"):
        await open_backend("sqlite:", Retention())


def test_the_error_is_a_value_error() -> None:
    assert issubclass(StoreConfigError, ValueError)
