"""Shutdown of a real server process: SIGTERM under load, SIGKILL and a restart.

The server is ``python -m app serve`` in a subprocess (``_procs.server_process``),
signalled as an orchestrator would. ``ENCLAVE_SECURITY_USERS`` sets how many users
are mid-run at the SIGTERM (default 50).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.security._clients import (
    ABNORMAL,
    TERMINAL_TYPES,
    Closed,
    Rejected,
    WsClient,
    connect,
    connect_with_backoff,
    http_get,
)
from tests.security._procs import FAULT_AGENT, env_int, gather, server_process

TRANSPORTS = pytest.mark.parametrize("transport", ["lean", "asgi"])
#: Seconds runs get on SIGTERM; a normal run (4 agent steps) takes 4 x AGENT_DELAY_MS.
GRACE_S = 3.0
AGENT_DELAY_MS = 200
#: Bound on the first 503 from /ready after the signal (a loaded machine included).
READY_BOUND_S = 2.0
#: After the grace: queued events flushed, close handshakes, serve() returns.
EXIT_SLACK_S = 5.0


@attrs.define
class _User:
    client: WsClient
    runs: dict[str, str]  # run_id -> the text that started it
    closed: Closed | None = None
    closed_at: float = 0.0


async def _load(port: int, users: int) -> list[_User]:
    """``users`` users, each with a normal run in flight; every other one a ``slow`` run too."""
    clients: list[WsClient] = await gather(
        *(lambda i=i: connect(port, f"user-{i}") for i in range(users))
    )

    async def start(i: int, client: WsClient) -> _User:
        texts = ["hello big world", "slow"] if i % 2 else ["hello big world"]
        runs = {await client.start(text): text for text in texts}
        return _User(client, runs)

    loaded: list[_User] = await gather(
        *(lambda i=i, c=c: start(i, c) for i, c in enumerate(clients))
    )
    return loaded


@attrs.frozen
class _Ready:
    sent: float
    answered: float
    status: int
    after_a_close: bool  # sent after some client had seen its connection close


async def _poll_ready(port: int, closes: list[float]) -> list[_Ready]:
    """GET /ready until it answers 503."""
    answers: list[_Ready] = []
    while not answers or answers[-1].status != 503:
        sent, after_a_close = trio.current_time(), bool(closes)
        status = (await http_get("127.0.0.1", port, "/ready")).status
        answers.append(_Ready(sent, trio.current_time(), status, after_a_close))
        await trio.sleep(0.01)
    return answers


@TRANSPORTS
async def test_sigterm_drains_users_mid_run_and_exits_zero(transport: str, tmp_path: Path) -> None:
    users = env_int("ENCLAVE_SECURITY_USERS", 50)
    args = (
        *("--agent", FAULT_AGENT),
        *("--agent-delay-ms", str(AGENT_DELAY_MS)),
        *("--shutdown-grace-s", str(GRACE_S)),
    )
    async with server_process(tmp_path, *args, transport=transport) as server:
        loaded = await _load(server.port, users)
        probe = loaded[1]  # has a slow run: stays open until the grace ends
        closes: list[float] = []

        async def read_to_close(user: _User) -> None:
            user.closed = await user.client.wait_closed()
            user.closed_at = trio.current_time()
            closes.append(user.closed_at)

        with trio.fail_after(GRACE_S + EXIT_SLACK_S + 10):
            async with trio.open_nursery() as nursery:
                for user in loaded:
                    nursery.start_soon(read_to_close, user)
                signalled = trio.current_time()
                server.signal(signal.SIGTERM)
                answers = await _poll_ready(server.port, closes)
                # While draining: a new handshake gets 503 + Retry-After, a new run is refused.
                with pytest.raises(Rejected) as refused:
                    await connect(server.port, "late")
                await probe.client.send(
                    {"type": "user_message", "text": "more", "client_id": "late-1"}
                )
                status = await server.wait_exit(GRACE_S + EXIT_SLACK_S)
            exited = trio.current_time() - signalled

    ready_after = answers[-1].answered - signalled
    # "At once": within READY_BOUND_S, and no request sent after a client saw its close got 200.
    assert ready_after < READY_BOUND_S, answers
    assert all(a.status == 503 for a in answers if a.after_a_close), answers
    assert refused.value.status == 503
    assert refused.value.headers["retry-after"] == "5"
    assert refused.value.headers["content-type"] == "application/json"
    refusal = [f for f in probe.client.frames if f.get("ref") == "late-1"]
    assert [(f["type"], f["code"]) for f in refusal] == [("error", "shutting_down")]

    outcomes: dict[str, int] = {}
    for user in loaded:
        assert user.closed is not None
        assert (user.closed.code, user.closed.reason) == (1001, "server_shutdown")
        for run_id, text in user.runs.items():
            terminal = _terminals(user.client.frames, run_id)
            assert len(terminal) == 1, (run_id, terminal)
            if text == "slow":  # outlives the grace
                assert terminal[0]["type"] == "run_cancelled", terminal
                assert terminal[0]["reason"] == "server_shutdown"
            else:
                assert terminal[0]["type"] == "agent_completed", terminal
            outcomes[terminal[0]["type"]] = outcomes.get(terminal[0]["type"], 0) + 1
    assert status == 0, server.log()
    assert exited < GRACE_S + EXIT_SLACK_S
    assert "SIGTERM: draining" in server.log()
    print(
        f"\n{transport}: {users} users, runs {outcomes}; /ready 503 after {ready_after:.3f} s "
        f"({len(answers)} request(s)); exit 0 after {exited:.2f} s (grace {GRACE_S} s)"
    )


def _terminals(frames: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("run_id") == run_id and f["type"] in TERMINAL_TYPES]


@TRANSPORTS
async def test_sigkill_gives_1006_and_clients_reconnect_to_a_restart(
    transport: str, tmp_path: Path
) -> None:
    users = 3
    args = ("--agent", FAULT_AGENT)
    async with server_process(tmp_path, *args, transport=transport) as first:
        port = first.port
        clients: list[WsClient] = await gather(
            *(lambda i=i: connect(port, f"user-{i}") for i in range(users))
        )
        lost = [await client.start("slow") for client in clients]
        first.signal(signal.SIGKILL)
        closes = [await client.wait_closed() for client in clients]
        assert await first.wait_exit(10) == -signal.SIGKILL
    # No close frame: the client sees 1006 (its own code for "abnormal closure").
    assert [(c.code, c.reason) for c in closes] == [(ABNORMAL, None)] * users

    async with trio.open_nursery() as nursery:
        results: list[tuple[WsClient, int]] = []

        async def reconnect(i: int) -> None:
            results.append(await connect_with_backoff(port, f"user-{i}"))

        for i in range(users):  # clients retry while the server restarts, on the same port
            nursery.start_soon(reconnect, i)
        async with server_process(tmp_path, *args, transport=transport, port=port) as second:
            with trio.fail_after(30):
                while len(results) < users:  # noqa: ASYNC110 - the tasks append
                    await trio.sleep(0.02)
            for (client, _failed), run_id in zip(results, lost, strict=False):
                # Runs in flight died with the process: there is no resume.
                await client.send({"type": "cancel", "run_id": run_id})
                error = await client.expect("error")
                assert (error["code"], error["ref"]) == ("run_not_found", run_id)
                assert (await client.run())["type"] == "agent_completed"
                await client.aclose()
            assert second.port == port
    assert any(failed > 0 for _, failed in results)  # they did have to retry


@TRANSPORTS
async def test_second_sigterm_skips_the_grace(transport: str, tmp_path: Path) -> None:
    grace_s = 60.0
    args = ("--agent", FAULT_AGENT, "--shutdown-grace-s", str(grace_s))
    async with server_process(tmp_path, *args, transport=transport) as server:
        clients: list[WsClient] = await gather(
            *(lambda i=i: connect(server.port, f"user-{i}") for i in range(3))
        )
        for client in clients:
            await client.start("slow")
        signalled = trio.current_time()
        server.signal(signal.SIGTERM)
        await _poll_ready(server.port, [])
        server.signal(signal.SIGTERM)
        closes = [await client.wait_closed() for client in clients]
        status = await server.wait_exit(EXIT_SLACK_S)
        exited = trio.current_time() - signalled
    # Stopped at once: no run_cancelled, no close frame.
    assert [(c.code, c.reason) for c in closes] == [(ABNORMAL, None)] * len(clients)
    assert not [f for c in clients for f in c.frames if f["type"] in TERMINAL_TYPES]
    assert status == 0
    assert exited < grace_s
    assert "SIGTERM again: stopping now" in server.log()
