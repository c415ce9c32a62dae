"""Chaos against durable threads: cut sockets, a SIGKILLed server, and nothing lost.

The server runs as a subprocess (``python -m app serve``) on a SQLite store, with runs
slowed down (``--agent-delay-ms``) so they can be cut mid-run and a short
``--resume-grace-s``. :data:`USERS` users, one :class:`ThreadClient` each, each in its
own thread, send :data:`MESSAGES` messages with ``client_id``s. A chaos driver cuts
random clients' sockets mid-run (TCP reset, no closing handshake); each client
reconnects, resumes after the last ``thread_seq`` it saw and re-sends the message it
did not see accepted, with the same ``client_id``. Once, the server is SIGKILLed and
restarted on the same database and port; the clients reconnect and resume.

At the end every thread is read back with ``history`` (paged with ``before``) and:

- the log is ``thread_seq`` 1, 2, 3, ... with no gap and no duplicate;
- every run is ``message_accepted`` first, ``seq`` 1..n, and ends with exactly one
  terminal event (``agent_completed``, ``agent_error`` or ``run_cancelled``). For the
  runs the SIGKILL cut that event is ``run_cancelled`` ``interrupted``, written by the
  restarted server when the thread is first opened; the test counts them and checks
  that everything before it is at or below ``last_seq`` of the first resume after the
  restart (the log as the SIGKILL left it);
- every ``client_id`` started exactly one run (a re-send is a new run only if the
  first copy never reached the log, else ``duplicate_message``);
- what each client received is the log: every ``thread_seq`` it got is the identical
  event in the log (write before send: a frame seen is a frame kept, SIGKILL
  included), every gap below the last one it saw is a ``message_accepted`` of its own
  (those are not sent to their sender) matching what it sent, and each connection got
  its thread's events in order.

The same runs against the scale-out deployments, on a private Redis: ``workers`` (one
``serve --workers 2 --store redis://…``; one worker is SIGKILLed and its supervisor starts
another) and ``nginx`` (two servers behind nginx on one Redis; one is SIGKILLed and stays
dead). A client of the killed process reconnects to the other one and resumes there; its
runs that the kill cut end ``interrupted`` once the dead process's lease on the thread has
lapsed (the other process writes that end). The checks are the same; a run is allowed to
end ``interrupted`` only after a kill.

Seeds are fixed (``CHAOS_SEED`` overrides) and printed; every loop is bounded and the
whole test runs under :data:`DEADLINE_S`.
"""

from __future__ import annotations

import os
import random
import signal
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio

from app.testing import RedisServer
from tests.chaos._thread_client import Shared, ThreadClient, check_thread, read_history
from tests.deploy._cluster import cluster
from tests.security._procs import ServerProcess, server_process

USERS: Final = 50
MESSAGES: Final = 4
SEED: Final = int(os.environ.get("CHAOS_SEED", "20261206"))
AGENT_DELAY_MS: Final = 30
RESUME_GRACE_S: Final = 5.0
#: Socket cuts at most, in all, and per client.
MAX_KILLS: Final = 150
MAX_KILLS_PER_CLIENT: Final = 3
#: The SIGKILL comes once this share of all messages has been accepted.
KILL_AT: Final = 0.4
DEADLINE_S: Final = 55.0
#: Longest the clients may take to send everything and see every run end.
CLIENTS_S: Final = 30.0


def _server_args(store: str) -> tuple[str, ...]:
    return (
        "--store",
        store,
        "--agent-delay-ms",
        str(AGENT_DELAY_MS),
        "--resume-grace-s",
        str(RESUME_GRACE_S),
        "--connect-rate-per-s",
        "0",  # the clients reconnect often; the per-user handshake budget is not under test
        "--shutdown-grace-s",
        "1",
    )


async def _chaos(clients: list[ThreadClient], rng: random.Random) -> int:
    """Cut random busy clients' sockets until every client is done; the number cut."""
    cut = 0
    for _ in range(100_000):  # bounded; ends when every client is done
        if all(c.done for c in clients):
            break
        await trio.sleep(rng.uniform(0.005, 0.03))
        if cut >= MAX_KILLS:
            continue
        busy = [c for c in clients if c.busy and c.kills < MAX_KILLS_PER_CLIENT]
        if busy and rng.choice(busy).kill():
            cut += 1
    return cut


async def _accepted_share(clients: list[ThreadClient]) -> None:
    """Return once :data:`KILL_AT` of all messages have been accepted."""
    total = USERS * MESSAGES
    with trio.fail_after(DEADLINE_S / 2):
        while sum(len(c.accepted) for c in clients) < KILL_AT * total:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def _serve_then_kill(
    scenario: str,
    store: str,
    tmp_path: Path,
    shared: Shared,
    clients: list[ThreadClient],
    stack: AsyncExitStack,
    busy_at_kill: list[int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the deployment of ``scenario``; once :data:`KILL_AT` of the messages are
    accepted, SIGKILL one of its processes (see the module docstring). Records how many
    clients were busy then."""
    args = _server_args(store)
    if scenario == "nginx":
        deployment = await stack.enter_async_context(cluster(tmp_path, *args, backends=2))
        shared.port = deployment.port
        task_status.started()
        await _accepted_share(clients)
        busy_at_kill.append(sum(c.busy for c in clients))
        victim = deployment.backends[0]
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit(10) == -signal.SIGKILL
        shared.generation = 1
        return
    if scenario == "workers":
        supervisor = await stack.enter_async_context(
            server_process(tmp_path, *args, "--workers", "2", transport="lean")
        )
        shared.port = supervisor.port
        task_status.started()
        await _accepted_share(clients)
        busy_at_kill.append(sum(c.busy for c in clients))
        worker = _children(supervisor.pid)[0]
        os.kill(worker, signal.SIGKILL)
        with trio.fail_after(10):
            while worker in _children(supervisor.pid):  # noqa: ASYNC110 - another process
                await trio.sleep(0.01)
        shared.generation = 1
        return
    first: ServerProcess = await stack.enter_async_context(
        server_process(tmp_path, *args, transport="lean")
    )
    shared.port = first.port
    task_status.started()
    await _accepted_share(clients)
    busy_at_kill.append(sum(c.busy for c in clients))
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(10) == -signal.SIGKILL
    shared.generation = 1  # from now on a connection reaches the restarted server
    second = await stack.enter_async_context(
        server_process(tmp_path, *args, transport="lean", port=shared.port)
    )
    assert second.port == shared.port


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a supervisor's workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        children += [int(child) for child in text.split()]
    return children


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", ["sqlite", "workers", "nginx"])
async def test_threads_survive_cut_sockets_and_a_sigkill(
    tmp_path: Path, scenario: str, request: pytest.FixtureRequest
) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED overrides): {USERS} users x {MESSAGES} messages")
    rng = random.Random(SEED)
    if scenario == "sqlite":
        store = f"sqlite:{tmp_path / 'threads.db'}"
    else:
        redis: RedisServer = request.getfixturevalue("redis")
        store = f"{redis.url}?prefix=chaos-{scenario}"
    shared = Shared(port=0, partial_kill=scenario != "sqlite")
    clients = [
        ThreadClient(
            index=i,
            shared=shared,
            messages=[(f"u{i}-m{k}", f"user {i} message {k}, count it") for k in range(MESSAGES)],
            rng=random.Random(f"{SEED}:{i}"),
        )
        for i in range(USERS)
    ]
    busy_at_kill: list[int] = []
    stuck: list[str] = []
    with trio.fail_after(DEADLINE_S):
        async with AsyncExitStack() as stack:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(
                        _serve_then_kill,
                        scenario,
                        store,
                        tmp_path,
                        shared,
                        clients,
                        stack,
                        busy_at_kill,
                    )
                )
                for client in clients:
                    nursery.start_soon(client.run)
                cuts = 0
                with trio.move_on_after(CLIENTS_S):
                    cuts = await _chaos(clients, rng)
                stuck = [f"stuck: {c.describe()}" for c in clients if not c.done]
                nursery.cancel_scope.cancel()
            logs = [await read_history(shared.port, c.user, c.thread_id) for c in clients]
            # Past the grace nothing changes: no run lives on, no late terminal event.
            await trio.sleep(RESUME_GRACE_S + 0.5)
            later = [await read_history(shared.port, c.user, c.thread_id) for c in clients]
    reports = [check_thread(c, log) for c, log in zip(clients, logs, strict=True)]
    problems = stuck + [
        f"{c.user}: {p}" for c, r in zip(clients, reports, strict=True) for p in r.problems
    ]
    if later != logs:
        problems.append("the logs changed after every run had ended")
    cut_runs = sum(r.cut_by_kill for r in reports)
    print(
        f"{cuts} sockets cut, {sum(c.reconnects for c in clients)} reconnects, "
        f"{sum(c.resends for c in clients)} retries of accepted messages, "
        f"{sum(c.duplicates for c in clients)} duplicate_message, "
        f"{sum(r.runs for r in reports)} runs / {sum(r.events for r in reports)} events logged, "
        f"{cut_runs} runs cut by the SIGKILL ({busy_at_kill} clients busy then)"
    )
    assert not problems, "\n".join(problems[:40])
    assert sum(r.runs for r in reports) == USERS * MESSAGES
    assert cuts > 0
