from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import hypercorn.trio.run as hypercorn_run
import pytest
import trio

from app.transports.asgi._hypercorn import ContainedTCPServer, contain_connection_errors

if TYPE_CHECKING:
    from tests.app.conftest import E2E

#: An upgrade request with bytes after it in the same write: h11 raises inside
#: Hypercorn's connection handler (Hypercorn issue 225). No token is needed.
TRAILING = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ==\r\n\r\nx\r\n"
)


def test_the_worker_builds_the_contained_server() -> None:
    contain_connection_errors()
    contain_connection_errors()  # idempotent
    assert hypercorn_run.TCPServer is ContainedTCPServer  # type: ignore[attr-defined]


async def test_a_hypercorn_error_ends_one_connection_not_the_server(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with e2e.server() as live, live.chat() as chat:
        for _ in range(3):  # the second one stopped the whole server before
            stream = await trio.open_tcp_stream(live.host, live.port)
            async with stream:
                await stream.send_all(TRAILING)
                with trio.move_on_after(5):
                    while await stream.receive_some(65_536):
                        pass
        # The connection that was already open, and new ones, are served.
        await chat.roundtrip()
        async with live.chat() as fresh:
            await fresh.roundtrip()
    assert "contained" in caplog.text
