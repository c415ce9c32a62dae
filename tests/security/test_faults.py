"""Faults against a real server process: broken agents, a full server, no file descriptors.

Each test runs ``python -m app serve`` in a subprocess (``_procs.server_process``) on
both transports and checks that the fault stays where it happened: one run, one
refused handshake, one queued TCP connection -- never another user's turns, never
the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from app.transports._accept_log import ACCEPT_LOG_INTERVAL_S
from tests.security._clients import (
    TERMINAL_TYPES,
    Rejected,
    WsClient,
    connect,
    connect_with_backoff,
)
from tests.security._procs import FAULT_AGENT, env_float, gather, server_process

TRANSPORTS = pytest.mark.parametrize("transport", ["lean", "asgi"])
#: The faults one user's runs hit, and the ``agent_error`` code each must end with.
FAULTS = {
    "hang": "run_timeout",
    "raise": "agent_failed",
    "invalid": "invalid_event",
    "unjson": "invalid_event",
}


def _seqs_ok(frames: list[dict[str, Any]]) -> bool:
    """Every run's seq counts 1, 2, 3, ... and nothing follows its terminal event."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for frame in frames:
        if "seq" in frame:
            runs.setdefault(frame["run_id"], []).append(frame)
    for events in runs.values():
        if [e["seq"] for e in events] != list(range(1, len(events) + 1)):
            return False
        if [e["type"] in TERMINAL_TYPES for e in events].count(True) != 1:
            return False
        if events[-1]["type"] not in TERMINAL_TYPES:
            return False
    return True


async def _chat_until(client: WsClient, done: trio.Event, completed: list[str]) -> None:
    """Run after run (two at a time) until ``done``; every run must complete."""
    while not done.is_set():
        for terminal in await client.runs(2):
            assert terminal["type"] == "agent_completed", terminal
            completed.append(terminal["run_id"])


@TRANSPORTS
async def test_agent_faults_end_only_their_run(transport: str, tmp_path: Path) -> None:
    args = (
        *("--agent", FAULT_AGENT),
        *("--agent-delay-ms", "20"),
        *("--run-timeout-s", "1.5"),
    )
    async with server_process(tmp_path, *args, transport=transport) as server:
        faulty = await connect(server.port, "faulty")
        others: list[WsClient] = await gather(
            *(lambda i=i: connect(server.port, f"user-{i}") for i in range(5))
        )
        done = trio.Event()
        completed: list[str] = []
        async with trio.open_nursery() as nursery:
            for client in others:
                nursery.start_soon(_chat_until, client, done, completed)
            # All four faults at once on one connection (max_runs is 4).
            runs = {await faulty.start(text): text for text in FAULTS}
            terminals = {run_id: await faulty.until_terminal(run_id) for run_id in runs}
            done.set()
        # The faulty user's connection is fine: a ping, then a normal run.
        await faulty.send({"type": "ping"})
        await faulty.expect("pong")
        assert (await faulty.run())["type"] == "agent_completed"
        for client in [faulty, *others]:
            await client.aclose()
        log = server.log()
        assert server.process.poll() is None, log

    for run_id, text in runs.items():
        terminal = terminals[run_id]
        assert terminal["type"] == "agent_error", terminal
        assert terminal["error"]["code"] == FAULTS[text], terminal
    assert _seqs_ok(faulty.frames), faulty.frames
    for client in others:
        assert _seqs_ok(client.frames), client.frames
        assert not [f for f in client.frames if f["type"] in ("error", "agent_error")]
    assert len(completed) >= 2 * len(others)
    assert "agent failed in run" in log  # the raise is logged with its traceback
    assert "a deliberate agent failure" in log
    assert "internal error" not in log
    print(f"\n{transport}: faults {sorted(FAULTS.values())}; others completed {len(completed)}")


@TRANSPORTS
async def test_max_connections_refuses_503_while_users_keep_chatting(
    transport: str, tmp_path: Path
) -> None:
    limit = 4
    args = (
        *("--max-connections", str(limit)),
        *("--retry-after-s", "7"),
        *("--agent-delay-ms", "20"),
    )
    async with server_process(tmp_path, *args, transport=transport) as server:
        users: list[WsClient] = await gather(
            *(lambda i=i: connect(server.port, f"user-{i}") for i in range(limit))
        )
        done = trio.Event()
        completed: list[str] = []
        refusals: list[Rejected] = []
        async with trio.open_nursery() as nursery:
            for client in users:
                nursery.start_soon(_chat_until, client, done, completed)
            for _ in range(5):
                before = len(completed)
                with pytest.raises(Rejected) as refused:
                    await connect(server.port, "one-too-many")
                refusals.append(refused.value)
                with trio.fail_after(15):  # the users' turns go on meanwhile
                    while len(completed) <= before:  # noqa: ASYNC110 - the chatters append
                        await trio.sleep(0.01)
            done.set()
        # One user leaves: its slot frees, the next handshake gets in.
        await users.pop().aclose()
        late, retries = await connect_with_backoff(server.port, "late", attempts=10)
        assert (await late.run())["type"] == "agent_completed"
        for client in [late, *users]:
            await client.aclose()

    for refusal in refusals:
        assert refusal.status == 503
        assert refusal.headers["retry-after"] == "7"
        assert refusal.headers["content-type"] == "application/json"
        assert b'"server is full"' in refusal.body
    assert all(_seqs_ok(client.frames) for client in users)
    print(f"\n{transport}: 5 refusals; users completed {len(completed)} runs; retries {retries}")


#: The server's open-file limit in the exhaustion test, and how many clients try.
NOFILE = 64
CLIENTS = 90
#: Bound on reaching the limit; then the server's CPU share is measured over the window.
STUCK_S = 10.0
#: ``ENCLAVE_SECURITY_SATURATE_S`` >= 10 lengthens it past one report interval.
CPU_WINDOW_S = env_float("ENCLAVE_SECURITY_SATURATE_S", 1.5)
#: Bound on the server's CPU share while saturated (a busy accept loop would use ~1.0).
CPU_BOUND = 0.3


@TRANSPORTS
async def test_fd_exhaustion_neither_crashes_nor_spins(transport: str, tmp_path: Path) -> None:
    args = ("--agent-delay-ms", "20")
    async with server_process(tmp_path, *args, transport=transport, nofile=NOFILE) as server:
        baseline = server.open_fds()
        clients: list[WsClient] = []
        refused: list[int] = []

        async def one(i: int) -> None:
            # Past the limit a connection waits in the listen backlog: no answer at all.
            try:
                clients.append(await connect(server.port, f"user-{i}"))
            except Rejected as exc:
                # The ASGI transport once answered 500 here: Python imported the idna codec
                # lazily, from disk, on the first request (now imported with the app).
                refused.append(exc.status)

        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(one, i)
            with trio.fail_after(STUCK_S):  # the process runs out of descriptors
                while (saturated := server.open_fds()) < NOFILE:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            # Measured while the connections past the limit wait and accept() fails.
            cpu_before, t_before = server.cpu_seconds(), trio.current_time()
            await trio.sleep(CPU_WINDOW_S)
            cpu_share = (server.cpu_seconds() - cpu_before) / (trio.current_time() - t_before)
            # Saturated, it still serves the users it has.
            assert clients
            assert (await clients[0].run())["type"] == "agent_completed"
            stuck = CLIENTS - len(clients)
            nursery.cancel_scope.cancel()  # the waiting clients give up
        assert stuck > 0, len(clients)
        log = server.log()
        await gather(*(client.aclose for client in clients))
        # Once clients leave, new ones are served again.
        after, retries = await connect_with_backoff(server.port, "after", attempts=10)
        assert (await after.run())["type"] == "agent_completed"
        await after.aclose()
        assert server.process.poll() is None

    assert saturated == NOFILE
    assert not refused, refused
    assert cpu_share < CPU_BOUND, cpu_share
    # trio.serve_listeners retries accept() every 0.1 s; the log gets one line per 10 s.
    reports = log.count("accept returned EMFILE")
    assert 1 <= reports <= 2 + CPU_WINDOW_S // ACCEPT_LOG_INTERVAL_S, log
    if CPU_WINDOW_S > ACCEPT_LOG_INTERVAL_S:
        assert "more since the last report" in log, log
    assert "Traceback" not in log, log
    print(
        f"\n{transport}: RLIMIT_NOFILE {NOFILE}, fds {baseline} idle -> {saturated} saturated; "
        f"{len(clients)} clients served, {stuck} left waiting; CPU {cpu_share:.1%}; "
        f"{reports} log line(s); served again after {retries} retries"
    )
