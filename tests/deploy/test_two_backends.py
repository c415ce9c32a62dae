"""Two server processes behind nginx (``_cluster.cluster``), as docs/deploy.md deploys them.

Clients connect to nginx only; where they landed is read from each backend's own
``/metrics``. Round-robin spreads chats over both backends; ``/health`` and ``/ready``
answer through the proxy and ``/metrics`` does not; a SIGKILLed backend costs its own
connections (1006) and nothing else: new connections, reconnects included, go to the
other one, a dead backend tried once and then left out (``max_fails``). A draining
backend (SIGTERM) answers handshakes 503, which nginx retries on the other backend.

The thread store is ``memory`` per process for now, so a thread does not follow its
user to another backend; with ``--store redis://...`` (one Redis for every backend) the
same cluster resumes a thread anywhere (a test to add beside these).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Final

import pytest

from tests.deploy._cluster import cluster, poll
from tests.security._clients import ABNORMAL, Closed, Rejected, WsClient, connect, http_get

#: Each test, start and stop of three processes included (a loaded two-core machine).
TEST_S: Final = 20
#: Every backend: a reconnecting user is not rate limited; shutdowns are short.
ARGS: Final = ("--connect-rate-per-s", "0", "--shutdown-grace-s", "1")


async def _chat(port: int, sub: str) -> WsClient:
    """A client through the proxy that completed one run."""
    client = await connect(port, sub)
    terminal = await client.run("hello big world")
    assert terminal["type"] == "agent_completed", terminal
    return client


@pytest.mark.timeout(TEST_S)
async def test_chats_through_nginx_reach_both_backends(tmp_path: Path) -> None:
    async with cluster(tmp_path, *ARGS) as c:
        clients = [await _chat(c.port, f"user-{i}") for i in range(4)]
        # One nginx worker, equal weights: connections alternate between the backends.
        assert await c.open_connections() == [2, 2]
        assert await c.metric("enclave_runs_started_total") == [2.0, 2.0]
        # Every connection is still live through the proxy: another run on each.
        for client in clients:
            assert (await client.run("again"))["type"] == "agent_completed"
        ready = await http_get("127.0.0.1", c.port, "/ready")
        assert (ready.status, ready.json()) == (200, {"status": "ready"})
        health = await http_get("127.0.0.1", c.port, "/health")
        assert (health.status, health.json()) == (200, {"status": "ok"})
        assert (await http_get("127.0.0.1", c.port, "/metrics")).status == 404
        for client in clients:
            await client.aclose()
        await c.wait_open_connections([0, 0])

        # nginx logs each WebSocket, with the backend that served it, once it closed.
        async def all_logged() -> bool:
            return c.proxy.access_log().count('"GET /ws" 101') == 4

        await poll(all_logged)
        access = c.proxy.access_log()
        for backend in c.backends:
            assert access.count(f'"GET /ws" 101 127.0.0.1:{backend.port} ') == 2, access
        assert "[error]" not in c.proxy.error_log(), c.proxy.error_log()


@pytest.mark.timeout(TEST_S)
async def test_a_killed_backend_is_skipped(tmp_path: Path) -> None:
    async with cluster(tmp_path, *ARGS) as c:
        first = await _chat(c.port, "alice")
        victim = c.backends[(await c.open_connections()).index(1)]
        second = await _chat(c.port, "bob")
        assert await c.open_connections() == [1, 1]
        # Kill the backend that serves alice: her connection ends without a close frame.
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit(10) == -signal.SIGKILL
        assert (await first.wait_closed()).code == ABNORMAL
        # bob, on the other backend, chats on; alice reconnects through the proxy and
        # lands there too, as does everyone who connects from now on.
        assert (await second.run("still here"))["type"] == "agent_completed"
        clients = [await _chat(c.port, "alice")]
        clients += [await _chat(c.port, f"user-{i}") for i in range(3)]
        survivor = c.backends[1 - c.backends.index(victim)]
        response = await http_get(survivor.host, survivor.port, "/metrics")
        assert "enclave_connections_open 5.0" in response.body.decode()
        ready = await http_get("127.0.0.1", c.port, "/ready")
        assert ready.status == 200
        for client in [second, *clients]:
            await client.aclose()
        # One refused connect took the dead backend out of rotation (max_fails=1) for
        # the rest of this test (fail_timeout): no connection was tried on it twice.
        errors = c.proxy.error_log()
        assert errors.count("connect() failed") == 1, errors
        assert f'upstream: "http://127.0.0.1:{victim.port}/ws"' in errors, errors


@pytest.mark.timeout(TEST_S)
async def test_a_draining_backend_hands_new_connections_to_the_other(tmp_path: Path) -> None:
    # A run that takes 4 x 400 ms keeps the SIGTERMed backend draining for its grace.
    args = ("--connect-rate-per-s", "0", "--agent-delay-ms", "400", "--shutdown-grace-s", "3")
    async with cluster(tmp_path, *args) as c:
        busy = await connect(c.port, "alice")
        await busy.start("a long run")
        draining = c.backends[(await c.open_connections()).index(1)]
        draining.signal(signal.SIGTERM)

        async def unready() -> bool:
            return (await http_get(draining.host, draining.port, "/ready")).status == 503

        await poll(unready)
        # Through the proxy: a handshake the draining backend refuses (503) is retried
        # on the other backend, so no client sees the drain.
        clients: list[WsClient] = []
        for i in range(4):
            try:
                clients.append(await connect(c.port, f"user-{i}"))
            except (Rejected, Closed) as exc:  # pragma: no cover - the failure reported
                raise AssertionError(f"connection {i} was refused: {exc!r}") from exc
        assert draining.process.poll() is None, "the backend stopped draining too soon"
        other = c.backends[1 - c.backends.index(draining)]
        response = await http_get(other.host, other.port, "/metrics")
        assert "enclave_connections_open 4.0" in response.body.decode()
        for client in clients:
            await client.aclose()
        # nginx's access log: a handshake tried on the draining backend, then the other.
        retried = f'"GET /ws" 101 127.0.0.1:{draining.port}, 127.0.0.1:{other.port} '

        async def logged() -> bool:
            return retried in c.proxy.access_log()

        await poll(logged)
        # The run on the draining backend ends (finished or cancelled) and it closes 1001.
        assert (await busy.wait_closed()).code == 1001
