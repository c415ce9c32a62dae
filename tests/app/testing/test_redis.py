"""redis_server: a private server on an ephemeral port that answers, then is gone."""

from __future__ import annotations

import socket

import pytest

from app.testing import RedisServer, redis_server


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(64)


def test_session_server_answers(redis: RedisServer) -> None:
    assert redis.port != 6379
    assert _ping(redis.port) == b"+PONG\r\n"
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"


def test_stopped_on_exit(redis: RedisServer) -> None:
    with redis_server() as server:
        port = server.port
        assert _ping(port) == b"+PONG\r\n"
    assert server.process.poll() is not None
    with pytest.raises(ConnectionRefusedError):
        _ping(port)
