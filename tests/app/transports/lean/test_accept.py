"""The lean transport's accept loop: handlers get their connections, capacity errors wait.

The end-to-end check at the open-file limit (one log line per 10 s, the users served,
new ones served again once descriptors free) is in ``tests/security/test_faults.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

import pytest
import trio
import trio.testing

from app.transports._accept_log import ACCEPT_LOGGER
from app.transports.lean._accept import CAPACITY_RETRY_S, accept_loop, raw_listener


async def _listener() -> socket.socket:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return raw_listener(listeners[0])


async def test_every_connection_reaches_the_handler_with_its_address() -> None:
    listener = await _listener()
    port = listener.getsockname()[1]
    seen: list[tuple[bytes, Any]] = []
    all_seen = trio.Event()

    async def handle(conn: socket.socket, address: Any) -> None:
        with conn:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            seen.append((await stream.receive_some(16), address))
            await stream.send_all(b"bye")
        if len(seen) == 5:
            all_seen.set()

    async def client(i: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"client %d" % i)
            assert await stream.receive_some(16) == b"bye"

    with trio.fail_after(5):
        async with trio.open_nursery() as handlers:
            handlers.start_soon(accept_loop, listener, handle, handlers)
            async with trio.open_nursery() as clients:
                for i in range(5):
                    clients.start_soon(client, i)
            await all_seen.wait()
            handlers.cancel_scope.cancel()
    assert sorted(data for data, _ in seen) == [b"client %d" % i for i in range(5)]
    assert all(address[0] == "127.0.0.1" and address[1] > 0 for _, address in seen)
    assert listener.fileno() == -1  # cancelled: the listener is closed


class _FlakyListener:
    """A listening socket whose accept() fails with ``errors`` first."""

    def __init__(self, inner: socket.socket, errors: list[int]) -> None:
        self.inner = inner
        self.errors = errors
        self.failed_at: list[float] = []

    def fileno(self) -> int:
        return self.inner.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.errors:
            self.failed_at.append(trio.current_time())
            raise OSError(self.errors.pop(0), "injected")
        return self.inner.accept()

    def close(self) -> None:
        self.inner.close()


async def test_out_of_descriptors_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = await _listener()
    port = inner.getsockname()[1]
    flaky = _FlakyListener(inner, [errno.EMFILE, errno.ENFILE])
    served = trio.Event()

    async def handle(conn: socket.socket, address: Any) -> None:
        conn.close()
        served.set()

    caplog.set_level(logging.ERROR, logger=ACCEPT_LOGGER)
    with trio.fail_after(5):
        async with trio.open_nursery() as handlers:
            handlers.start_soon(accept_loop, flaky, handle, handlers)  # type: ignore[arg-type]
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await served.wait()
            handlers.cancel_scope.cancel()
        await client.aclose()
    gaps = [b - a for a, b in zip(flaky.failed_at, flaky.failed_at[1:], strict=False)]
    assert len(flaky.failed_at) == 2
    assert all(gap >= CAPACITY_RETRY_S * 0.9 for gap in gaps)  # no busy loop
    messages = [r.getMessage() for r in caplog.records if r.name == ACCEPT_LOGGER]
    assert messages == [
        f"accept returned EMFILE ({os.strerror(errno.EMFILE)}); retrying in 0.1 seconds",
        f"accept returned ENFILE ({os.strerror(errno.ENFILE)}); retrying in 0.1 seconds",
    ]


async def test_any_other_accept_error_ends_the_loop_and_closes_the_listener() -> None:
    inner = await _listener()
    flaky = _FlakyListener(inner, [errno.EBADF])
    # Make the listener readable, so that accept() is called.
    client = socket.create_connection(inner.getsockname())

    async def handle(conn: socket.socket, address: Any) -> None:
        raise AssertionError("never reached")

    with trio.fail_after(5):
        async with trio.open_nursery() as handlers:
            with pytest.raises(OSError, match="injected") as raised:
                await accept_loop(flaky, handle, handlers)  # type: ignore[arg-type]
    client.close()
    assert raised.value.errno == errno.EBADF
    assert inner.fileno() == -1
