"""End to end: ``serve()`` and its lifecycle (drain, 1001, hard stop), and ``enclave`` as a process.

The in-process tests drive the drain with ``RunningServer.shutdown(grace)`` (what SIGTERM
does); the subprocess tests send real signals to ``python -m app serve`` and check its
exit codes, its stderr and the dev-mode banner.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest
import trio

if TYPE_CHECKING:
    from tests.app.conftest import E2E

SECRET: Final = "server-test-secret-0123456789abcdef"
#: Hypercorn keeps a closed WebSocket's connection task alive until its ping sleep ends, which
#: delays serve()'s return after a drain by min(ping interval, 5 s) (see the xfail test below);
#: the drain tests use a short interval so that only that test is about it.
FAST_PING: Final = 0.3
LISTENING: Final = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
#: Generous bound on a subprocess starting up (imports included).
START_S: Final = 15.0


# -- in process: serve() and the drain --------------------------------------------------


async def test_serve_returns_after_shutdown_without_connections(e2e: E2E) -> None:
    async with e2e.server() as live:
        live.shutdown(10)
        await live.wait_stopped()


async def test_ready_is_503_while_draining(e2e: E2E) -> None:
    async with e2e.server(agent_delay_ms=100) as live, live.chat() as chat:
        started = await chat.start()
        assert (await live.get("/ready")).status == 200
        live.shutdown(5)
        response = await live.get("/ready")
        assert response.status == 503
        assert response.json() == {"status": "draining"}
        assert (await live.get("/health")).status == 200
        await chat.run_until_terminal(started["run_id"])


async def test_new_handshake_is_503_while_draining(e2e: E2E) -> None:
    async with (
        e2e.server(agent_delay_ms=100, retry_after_s=3) as live,
        live.chat(e2e.token("a")) as chat,
    ):
        started = await chat.start()
        live.shutdown(5)
        rejection = await live.reject(e2e.token("b"))
        assert rejection.status == 503
        assert rejection.headers["retry-after"] == "3"
        assert rejection.json() == {"error": "unavailable", "detail": "server is draining"}
        await chat.run_until_terminal(started["run_id"])


async def test_shutdown_lets_an_in_flight_run_finish_then_closes_1001(e2e: E2E) -> None:
    async with (
        e2e.server(agent_delay_ms=100, ping_interval_s=FAST_PING) as live,
        live.chat() as chat,
    ):
        started = await chat.start("finish me")
        began = time.monotonic()
        live.shutdown(3)
        # A message at the very moment of the shutdown may still start a run (docs); one a
        # moment later is refused, and the open run carries on.
        await trio.sleep(0.05)
        await chat.send({"type": "user_message", "text": "too late", "client_id": "late"})
        frames = await chat.run_until_terminal(started["run_id"])
        assert frames[-1]["type"] == "agent_completed"
        refusals = [f for f in chat.frames if f["type"] == "error"]
        assert [(f["code"], f.get("ref")) for f in refusals] == [("shutting_down", "late")]
        assert await chat.closed() == (1001, "server_shutdown")
        # The close came when the run ended, not at the end of the grace period.
        assert time.monotonic() - began < 2
        await live.wait_stopped()
    run_id = started["run_id"]
    own = [f["type"] for f in chat.frames if f.get("run_id") == run_id]
    assert own == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    ]


async def test_shutdown_cancels_runs_longer_than_the_grace(e2e: E2E) -> None:
    async with (
        e2e.server(agent_delay_ms=500, ping_interval_s=FAST_PING) as live,
        live.chat() as chat,
    ):
        first = await chat.start("one")
        second = await chat.start("two")
        began = time.monotonic()
        live.shutdown(0.3)
        code_reason = await chat.closed()
        elapsed = time.monotonic() - began
        await live.wait_stopped()
    assert code_reason == (1001, "server_shutdown")
    assert 0.25 <= elapsed < 1.5
    for started in (first, second):
        own = [f for f in chat.frames if f.get("run_id") == started["run_id"]]
        assert own[-1]["type"] == "run_cancelled"
        assert own[-1]["reason"] == "server_shutdown"
        terminal = [f for f in own if f["type"] in {"agent_completed", "run_cancelled"}]
        assert len(terminal) == 1
        assert [f["seq"] for f in own] == list(range(1, len(own) + 1))


async def test_shutdown_closes_an_idle_connection_at_once(e2e: E2E) -> None:
    async with e2e.server(ping_interval_s=FAST_PING) as live, live.chat() as chat:
        began = time.monotonic()
        live.shutdown(30)
        assert await chat.closed() == (1001, "server_shutdown")
        assert time.monotonic() - began < 1
        await live.wait_stopped()


async def test_serve_returns_promptly_once_the_drain_closed_every_connection(e2e: E2E) -> None:
    async with e2e.server() as live:  # the default 20 s ping interval
        async with live.chat() as chat:
            live.shutdown(30)
            assert await chat.closed() == (1001, "server_shutdown")
        await live.wait_connections(0)
        with trio.fail_after(1.5):
            await live.wait_stopped()


async def test_cancelling_serve_drops_connections_without_a_close_frame(e2e: E2E) -> None:
    async with e2e.server() as live, live.chat() as chat:
        live.stop_now()
        await live.wait_stopped()
        code, _ = await chat.closed()
        assert code == 1006  # abnormal closure: no close frame


# -- the enclave process ----------------------------------------------------------------


def _env() -> dict[str, str]:
    """This environment without ENCLAVE_* settings that would change what is tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@attrs.define
class Enclave:
    """A running ``python -m app ...`` with its output collected as it arrives."""

    process: trio.Process
    out: bytearray = attrs.field(factory=bytearray)
    err: bytearray = attrs.field(factory=bytearray)

    async def wait_for(self, pattern: re.Pattern[str], *, stream: str = "err") -> re.Match[str]:
        buffer = self.err if stream == "err" else self.out
        with trio.fail_after(START_S):
            while True:
                match = pattern.search(buffer.decode(errors="replace"))
                if match:
                    return match
                assert self.process.returncode is None, self.report()
                await trio.sleep(0.02)

    async def wait_exit(self) -> int:
        """The exit code; unbounded, so callers wrap it in ``trio.fail_after``."""
        return await self.process.wait()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def report(self) -> str:
        out, err = self.out.decode(errors="replace"), self.err.decode(errors="replace")
        return f"stdout:\n{out}\nstderr:\n{err}"


async def _pump(source: trio.abc.ReceiveStream | None, sink: bytearray) -> None:
    assert source is not None
    while chunk := await source.receive_some(65_536):
        sink += chunk


@asynccontextmanager
async def enclave(*args: str, cwd: Path | None = None) -> AsyncIterator[Enclave]:
    """Run ``python -m app *args``; killed on exit if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "app", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_env(),
    )
    proc = Enclave(process)
    error: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, process.stdout, proc.out)
            nursery.start_soon(_pump, process.stderr, proc.err)
            try:
                yield proc
            except Exception as exc:
                error = exc
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.fail_after(5):
                    await process.wait()
    finally:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()
    if error is not None:
        raise error


async def run_enclave(
    args: Sequence[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(START_S):
        return await trio.run_process(
            [sys.executable, "-m", "app", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=_env(),
        )


def serve_args(*extra: str) -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", "0", "--jwt-secret", SECRET, *extra]


async def test_sigterm_drains_then_exits_0(e2e: E2E) -> None:
    token = e2e.token("alice", secret=SECRET.encode())
    async with enclave(
        *serve_args(
            "--shutdown-grace-s", "2", "--agent-delay-ms", "200", "--ping-interval-s", "0.3"
        )
    ) as proc:
        port = int((await proc.wait_for(LISTENING)).group(1))
        client = e2e.endpoint("127.0.0.1", port)
        async with client.chat(token) as chat:
            started = await chat.start("drain me")
            signalled = time.monotonic()
            proc.signal(signal.SIGTERM)
            with trio.fail_after(1):  # the run takes 0.8 s: this is during the drain
                while (ready := await client.get("/ready")).status != 503:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert ready.json() == {"status": "draining"}
            rejection = await client.reject(token)
            assert (rejection.status, rejection.headers["retry-after"]) == (503, "5")
            frames = await chat.run_until_terminal(started["run_id"])
            assert frames[-1]["type"] == "agent_completed"
            assert await chat.closed() == (1001, "server_shutdown")
        with trio.fail_after(2 + 3):
            assert await proc.wait_exit() == 0, proc.report()
        assert time.monotonic() - signalled < 2 + 3
    assert b"Traceback" not in proc.err, proc.report()


async def test_second_sigterm_stops_at_once(e2e: E2E) -> None:
    token = e2e.token("alice", secret=SECRET.encode())
    async with enclave(*serve_args("--shutdown-grace-s", "30", "--agent-delay-ms", "1000")) as proc:
        port = int((await proc.wait_for(LISTENING)).group(1))
        client = e2e.endpoint("127.0.0.1", port)
        async with client.chat(token) as chat:
            await chat.start("a long run")
            proc.signal(signal.SIGTERM)
            with trio.fail_after(2):
                while (await client.get("/ready")).status != 503:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            signalled = time.monotonic()
            proc.signal(signal.SIGTERM)
            with trio.fail_after(3):  # not the 30 s grace, nor the 4 s run
                await proc.wait_exit()
            assert time.monotonic() - signalled < 3
            code, _ = await chat.closed()
            assert code == 1006  # dropped without a close frame
            assert not [f for f in chat.frames if f["type"] == "run_cancelled"]
    assert b"Traceback" not in proc.err, proc.report()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["serve", "--port", "99999", "--jwt-secret", SECRET], "--port"),
        (["serve", "--jwt-secret", "0123456789"], "at least 32 bytes"),
        (["serve"], "exactly one key source"),
    ],
    ids=["port-out-of-range", "short-secret", "no-key"],
)
async def test_bad_config_exits_2_with_a_clear_message(args: list[str], fragment: str) -> None:
    result = await run_enclave(args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("enclave: configuration error:"), err
    assert fragment in err
    assert "Traceback" not in err
    assert "0123456789" not in err  # a secret is never echoed
    assert result.stdout == b""


async def test_token_command_mints_a_token_the_server_accepts(e2e: E2E) -> None:
    result = await run_enclave(["token", "--sub", "alice", "--jwt-secret", SECRET])
    assert result.returncode == 0, result.stderr.decode()
    token = result.stdout.decode().strip()
    assert token.count(".") == 2
    async with e2e.server(jwt_secret=SECRET.encode()) as live, live.chat(token) as chat:
        assert chat.ready["user_id"] == "alice"


BANNER_TOKEN: Final = re.compile(r"a token for user 'dev-user' \(24 h\):\s+(\S+)")
BANNER_CHAT: Final = re.compile(r"enclave chat --url (ws://127\.0\.0\.1:\d+/ws) --token (\S+)")


async def test_dev_mode_creates_a_private_secret_and_prints_a_working_token(
    e2e: E2E, tmp_path: Path
) -> None:
    args = ("serve", "--dev", "--host", "127.0.0.1", "--port", "0", "--ping-interval-s", "0.3")
    async with enclave(*args, cwd=tmp_path) as proc:
        await proc.wait_for(re.compile(r"more tokens:"), stream="out")
        banner = proc.out.decode()
        token_match = BANNER_TOKEN.search(banner)
        chat_match = BANNER_CHAT.search(banner)
        assert token_match, banner
        assert chat_match, banner
        token = token_match.group(1)
        assert chat_match.group(2) == token

        secret_file = tmp_path / ".enclave" / "dev-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret_file.parent.stat().st_mode) & 0o077 == 0
        assert len(secret_file.read_bytes().strip()) >= 32
        assert secret_file.read_text().strip() not in banner

        url = chat_match.group(1)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with e2e.endpoint("127.0.0.1", port).chat(token) as chat:
            assert chat.ready["user_id"] == "dev-user"
        proc.signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await proc.wait_exit() == 0, proc.report()


@attrs.frozen
class ClosingAgent:
    """An agent whose ``aclose()`` records that it was awaited."""

    closed: trio.Event = attrs.field(factory=trio.Event)
    name: str = "closing"

    async def run(self, run: Any, emit: Any) -> Any:
        return "ok"

    async def aclose(self) -> None:
        self.closed.set()


async def test_serve_closes_the_agent_when_it_stops(e2e: E2E) -> None:
    from app.services._build import build_services

    settings = e2e.settings()
    agent = ClosingAgent()
    services = attrs.evolve(build_services(settings), agent=agent)
    async with e2e.server(settings, services=services) as live:
        live.shutdown(0)
        await live.wait_stopped()
        assert agent.closed.is_set()
    agent = ClosingAgent()
    services = attrs.evolve(services, agent=agent)
    async with e2e.server(settings, services=services):
        pass  # the hard stop: serve() is cancelled
    assert agent.closed.is_set()
