"""Two server processes behind nginx sharing one Redis: a thread follows its user anywhere.

A client whose connection is cut while its run executes behind one backend reconnects
through nginx, lands on the other backend and resumes: the events it missed, then the
rest of the run live (read from Redis as the first backend writes them), nothing lost,
nothing twice. And the runtime isolation audit (``python -m isolation audit``) finds no
leak across the two backends: users drop and reconnect to whichever backend nginx picks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from app.testing import RedisServer
from isolation.audit._plan import AuditConfig
from isolation.audit._run import run_audit
from tests.deploy._cluster import cluster
from tests.security._clients import WsClient, connect
from tests.security._procs import SECRET

TEST_S: Final = 45
ARGS: Final = ("--connect-rate-per-s", "0", "--shutdown-grace-s", "1", "--resume-grace-s", "10")


def _store(redis: RedisServer, prefix: str) -> tuple[str, str]:
    return ("--store", f"{redis.url}?prefix={prefix}")


async def _cut(client: WsClient) -> None:
    """Drop the connection as a dead network would: a TCP reset, no closing handshake."""
    with contextlib.suppress(OSError):
        client.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    await trio.aclose_forcefully(client.stream)


@pytest.mark.timeout(TEST_S)
async def test_a_run_cut_behind_one_backend_is_resumed_behind_the_other(
    tmp_path: Path, redis: RedisServer, redis_prefix: str
) -> None:
    args = (*ARGS, "--agent-delay-ms", "400", *_store(redis, redis_prefix))
    async with cluster(tmp_path, *args) as c:
        first = await connect(c.port, "alice")
        epoch = first.frames[0]["epoch"]
        served = (await c.open_connections()).index(1)
        await first.send({"type": "user_message", "text": "one two three", "client_id": "m1"})
        started = await first.expect("agent_started")
        seen: list[dict[str, Any]] = [started]
        await _cut(first)
        # Round robin: the next connection goes to the other backend, where the run is not.
        second = await connect(c.port, "alice")
        assert second.frames[0]["epoch"] == epoch  # one store behind both
        after = started["thread_seq"]
        await second.send({"type": "resume", "thread_id": started["thread_id"], "after": after})
        while (frame := await second.recv())["type"] != "resumed":
            seen.append(frame)
        assert frame["recovered"] is True
        assert frame["live_runs"] == [started["run_id"]]  # still running behind the first
        end = await second.until_terminal(started["run_id"])
        seen += [f for f in second.frames[1:] if "thread_seq" in f and f not in seen]
        # The thread as the client saw it: 2 (agent_started) .. the end, no gap, no repeat.
        seqs = [f["thread_seq"] for f in seen]
        assert seqs == list(range(after, after + len(seqs))), seqs
        assert end["type"] == "agent_completed"
        assert end["result"] == {"text": "one two three", "words": 3}
        # The next message is written behind this backend (the first gave the thread up).
        await second.send(
            {"type": "user_message", "text": "next", "thread_id": started["thread_id"]}
        )
        nxt = await second.expect("agent_started")
        assert nxt["thread_seq"] == end["thread_seq"] + 2  # its message_accepted is between
        assert (await second.until_terminal(nxt["run_id"]))["type"] == "agent_completed"
        await second.aclose()
        # The first run behind one backend, the second behind the other.
        started_runs = await c.metric("enclave_runs_started_total")
        assert started_runs[served] == 1.0
        assert started_runs[1 - served] == 1.0


@pytest.mark.timeout(TEST_S)
async def test_the_isolation_audit_passes_across_both_backends(
    tmp_path: Path, redis: RedisServer, redis_prefix: str
) -> None:
    args = (*ARGS, "--agent-delay-ms", "100", *_store(redis, redis_prefix))
    async with cluster(tmp_path, *args) as c:
        config = AuditConfig(
            url=f"ws://127.0.0.1:{c.port}/ws",
            users=30,
            runs=3,
            jwt_secret=SECRET.encode(),
            seed=11,
            think_ms=10.0,
            drop_rate=0.2,  # reconnects land on either backend
            timeout_s=30.0,
            frame_timeout_s=10.0,
        )
        report = await run_audit(config)
        per_backend = await c.metric("enclave_runs_started_total")
    assert report.violations == (), report.format_text()
    assert report.anomalies == (), report.format_text()
    assert report.drops > 0, report.format_text()
    assert all(count > 0 for count in per_backend), per_backend
