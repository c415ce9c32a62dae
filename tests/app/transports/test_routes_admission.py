"""The per-user admission replies end to end: real servers, real clients, real sockets.

``--max-connections-per-user``'s 429 reaches the client with its reason and
``Retry-After``; a user's place is given back however its connection ends; and two
lean servers sharing one Redis (two processes) share the user's count.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio

from app import ServerLifecycle, Settings, build_services
from app.services._admission import AdmissionLimits, MemoryAdmission
from app.services._admission_redis import RedisAdmission, admission_keys
from app.testing import RedisServer
from app.transports.lean._server import serve_lean

if TYPE_CHECKING:
    from tests.app.conftest import E2E, Endpoint, LiveServer

WAIT_S = 5.0


@pytest.fixture(params=["lean", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def refused_for_user_connections(live: LiveServer) -> float:
    """``enclave_handshakes_refused_total{reason="user_connections"}``."""
    body = (await live.get("/metrics")).body.decode()
    prefix = 'enclave_handshakes_refused_total{reason="user_connections"} '
    (line,) = [line for line in body.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_too_many_open_connections_is_a_429_with_its_reason(e2e: E2E) -> None:
    settings = e2e.settings(max_connections_per_user=2, connect_rate_per_s=0, retry_after_s=7)
    async with e2e.server(settings) as live:
        async with live.chat() as first, live.chat():
            refused = await live.reject(e2e.token())
            assert refused.status == 429
            assert refused.headers["retry-after"] == "7"
            assert refused.json()["error"] == "too_many_open_connections"
            assert "too many connections for this user" in refused.json()["detail"]
            assert "at most 2 open at once" in refused.json()["detail"]
            async with live.chat(e2e.token("bob")):  # another user's count
                pass
            await first.send({"type": "ping"})
            assert (await first.recv())["type"] == "pong"  # the open ones are untouched
        await live.wait_connections(0)
        async with live.chat(), live.chat():  # both places were given back
            pass
        assert await refused_for_user_connections(live) == 1


@pytest.mark.parametrize("transport", ["lean"])
async def test_a_connection_cut_without_a_close_gives_its_place_back(e2e: E2E) -> None:
    settings = e2e.settings(max_connections_per_user=1, connect_rate_per_s=0, resume_grace_s=0)
    async with e2e.server(settings) as live:
        async with live.raw(e2e.token()) as client:
            await live.wait_connections(1)
            assert (await live.reject(e2e.token())).status == 429
            # A reset, not a close: the server learns it from a failed read.
            client.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            client.stream.socket.close()
        await live.wait_connections(0)
        async with live.chat() as chat:
            assert chat.ready["type"] == "connection_ready"


@pytest.mark.parametrize("transport", ["lean"])
async def test_a_stopped_server_gives_its_places_back(e2e: E2E) -> None:
    settings = e2e.settings(max_connections_per_user=1, connect_rate_per_s=0)
    async with e2e.server(settings) as live:
        admission = live.running.lifecycle.admission
        assert isinstance(admission, MemoryAdmission)
        async with live.raw(e2e.token()):
            await live.wait_connections(1)
            assert admission.open_count("alice") == 1
            live.stop_now()  # cancels every connection
            await live.wait_stopped()
    assert admission.open_count("alice") == 0


# -- two lean servers, one Redis ------------------------------------------------------


@asynccontextmanager
async def lean_process(
    e2e: E2E, settings: Settings, client: coredis.Redis[Any], prefix: str
) -> AsyncIterator[Endpoint]:
    """A lean server whose admission is shared through ``client`` (what ``serve()`` runs
    for ``--store redis://``, with the client given rather than opened)."""
    services = build_services(settings)
    admission = RedisAdmission(client, AdmissionLimits.from_settings(settings), prefix=prefix)
    lifecycle = ServerLifecycle(max_connections=100, admission=admission)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifecycle.timer.run)
        await nursery.start(lifecycle.threads.run)
        await nursery.start(admission.run)
        url: str = await nursery.start(serve_lean, services, lifecycle)
        yield e2e.endpoint("127.0.0.1", int(url.rsplit(":", 1)[1]), settings.path)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("transport", ["lean"])
async def test_two_servers_sharing_redis_share_the_users_count(
    e2e: E2E, redis: RedisServer, redis_prefix: str
) -> None:
    settings = e2e.settings(max_connections_per_user=1, connect_rate_per_s=0)
    client: coredis.Redis[Any] = coredis.Redis.from_url(redis.url)
    with trio.fail_after(WAIT_S * 2):
        async with (
            client,
            lean_process(e2e, settings, client, redis_prefix) as one,
            lean_process(e2e, settings, client, redis_prefix) as two,
        ):
            async with one.chat():
                refused = await two.reject(e2e.token())
                assert refused.status == 429
                assert refused.json()["error"] == "too_many_open_connections"
                async with two.chat(e2e.token("bob")):
                    pass
            alice = admission_keys(redis_prefix, "alice")[2]
            with trio.fail_after(WAIT_S):
                # The release reaches Redis as the first server's connection task ends.
                while await client.zcard(alice):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            async with two.chat() as chat:
                assert chat.ready["type"] == "connection_ready"
