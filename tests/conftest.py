"""Fixtures every test folder may use: real components started by the tests themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.testing import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One private redis-server for the session (skipped when missing; failing under CI=true)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own: tests share the server, never their keys."""
    return f"t{uuid.uuid4().hex[:12]}"
