"""Several server processes behind one nginx: what a deployment is, on 127.0.0.1.

:func:`cluster` starts ``backends`` processes of ``python -m app serve`` (each on an
ephemeral port, all with the same signing key, ``tests.security._procs``), then a private
nginx in front of them (``app.testing.nginx_proxy``). Clients connect to
:attr:`Cluster.port` with ``tests.security._clients.connect`` as they would to one server;
a test reads each backend directly (``/metrics``) to see where they landed, and signals
a backend as an orchestrator would::

    async with cluster(tmp_path, "--store", redis_url) as c:
        client = await connect(c.port, "alice")
        c.backends[0].signal(signal.SIGKILL)

Extra ``args`` go to every backend (``--store redis://...`` for a shared thread log).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import trio

from app.testing import NginxProxy, nginx_proxy
from tests.security._clients import http_get
from tests.security._procs import ServerProcess, server_process

__all__ = ["Cluster", "cluster", "poll"]

#: Bound on starting every backend (interpreters, imports, listen) and the proxy.
START_S: Final = 30.0


@attrs.frozen
class Cluster:
    """Backends (in upstream order) and the nginx in front of them."""

    backends: tuple[ServerProcess, ...]
    proxy: NginxProxy

    @property
    def port(self) -> int:
        """Where clients connect: the proxy."""
        return self.proxy.port

    async def metric(self, name: str) -> list[float]:
        """``name``'s value on each backend, read from its own ``/metrics`` (not the proxy's)."""
        values = []
        for backend in self.backends:
            response = await http_get(backend.host, backend.port, "/metrics")
            assert response.status == 200, response
            match = re.search(rf"^{re.escape(name)} (\S+)$", response.body.decode(), re.MULTILINE)
            assert match is not None, f"{name} not in the metrics of {backend.port}"
            values.append(float(match.group(1)))
        return values

    async def open_connections(self) -> list[int]:
        """WebSocket connections open on each backend now."""
        return [int(v) for v in await self.metric("enclave_connections_open")]

    async def wait_open_connections(self, expected: Sequence[int], timeout_s: float = 5) -> None:
        """Poll each backend until its open connections are ``expected`` (the server counts
        a connection closed a moment after the client saw it close)."""

        async def reached() -> bool:
            return await self.open_connections() == list(expected)

        await poll(reached, timeout_s)


async def poll(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5) -> None:
    """Until ``condition()`` holds; TooSlowError after ``timeout_s``.

    What it watches is in other processes (a backend's metrics, nginx's logs), which
    offer nothing to wait on: it is asked every 20 ms.
    """
    with trio.fail_after(timeout_s):
        while not await condition():  # noqa: ASYNC110 - another process's state: polled
            await trio.sleep(0.02)


@asynccontextmanager
async def cluster(
    log_dir: Path, *args: str, backends: int = 2, transport: str = "lean"
) -> AsyncIterator[Cluster]:
    """``backends`` servers (``args`` given to each) behind nginx, for the block.

    Cancellation, or the block's end: nginx stops, then every backend's process group
    is killed (``server_process``); each bounded.
    """
    async with AsyncExitStack() as stack:
        processes: list[ServerProcess | None] = [None] * backends

        async def start(i: int) -> None:
            # Each backend's context is entered here but owned by the stack, which exits
            # it in this (the test's) task: the starts only run side by side.
            processes[i] = await stack.enter_async_context(
                server_process(log_dir, *args, transport=transport)
            )

        with trio.fail_after(START_S):
            async with trio.open_nursery() as nursery:
                for i in range(backends):
                    nursery.start_soon(start, i)
        started = tuple(p for p in processes if p is not None)
        assert len(started) == backends
        proxy = stack.enter_context(nginx_proxy([(p.host, p.port) for p in started]))
        yield Cluster(started, proxy)
