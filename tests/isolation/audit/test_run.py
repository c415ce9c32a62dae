"""The runtime audit against live servers: ours (clean) and small deliberately leaky ones.

A leaky server here is a few dozen lines of chat.v1 over trio-websocket with one
classic bug: events broadcast to every connection, conversation history keyed by a
thread id that users do not own, or runs looked up in a process-wide table by id.
The audit must name each leak with evidence; against our server it must find none.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from app import RunningServer, Settings, serve
from isolation.audit._cli import add_audit_parser, run_audit_command
from isolation.audit._link import Endpoint, Limits
from isolation.audit._plan import make_plans
from isolation.audit._report import reply_shape
from isolation.audit._run import AuditConfig, AuditError, AuditReport, lookalike_id, run_audit

SECRET: Final = b"audit-test-secret-0123456789abcdef"
REPO: Final = Path(__file__).resolve().parents[3]


@asynccontextmanager
async def our_server(**overrides: Any) -> AsyncIterator[str]:
    """Our real server on 127.0.0.1:ephemeral; yields its WebSocket URL."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "jwt_secret": SECRET}
    values.update(overrides)
    settings = Settings(**values)
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve, settings)
        yield server.ws_url + settings.path
        nursery.cancel_scope.cancel()


def config(url: str, **overrides: Any) -> AuditConfig:
    values: dict[str, Any] = {
        "url": url,
        "users": 20,
        "runs": 3,
        "jwt_secret": SECRET,
        "seed": 7,
        "think_ms": 10.0,
        "timeout_s": 25.0,
        "frame_timeout_s": 8.0,
    }
    values.update(overrides)
    return AuditConfig(**values)


# -- (a) our server: clean --------------------------------------------------------------


async def test_a_clean_audit_of_our_server() -> None:
    cfg = config("", users=50, runs=4, cancel_rate=0.2, drop_rate=0.05, idor_rate=0.15)
    # Runs of ~1.2 s: long enough for probes to hit runs that are provably still open,
    # even on a machine busy with other work.
    async with our_server(agent_delay_ms=300) as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.violations == (), report.format_text()
    assert report.anomalies == (), report.format_text()
    assert report.exit_code == 0
    assert report.clean
    plans = make_plans(cfg, 7)  # the plan is a pure function of config and seed
    probers = sum(plan.victim is not None for plan in plans)
    assert probers > 0
    assert report.idor_probes == probers
    assert report.idor_probes_live > 0, report.probes
    assert report.thread_probes == probers
    shown = report.format_text()
    assert report.drops == report.drops_planned == sum(plan.drops for plan in plans) > 0, shown
    assert report.connections == 50 + report.drops + 1, shown  # one preflight connection
    # Every run is accounted for.
    assert report.runs_planned == 50 * 4 + probers, shown
    assert report.runs_sent == report.runs_planned, shown
    assert report.runs_rejected == report.runs_errored == 0, shown
    assert report.runs_started + report.runs_lost == report.runs_sent, shown
    ended = report.runs_completed + report.runs_cancelled + report.runs_interrupted
    assert ended == report.runs_started, shown
    assert report.runs_cancelled > 0, shown
    assert report.frames_checked > 4 * report.runs_started, shown
    # Our server answers a probe of a live run exactly like one of a missing run.
    for probe in report.probes:
        assert probe.indistinguishable
        assert probe.real_reply is not None
        assert probe.real_reply["code"] == "run_not_found"
    assert report.seed == 7
    assert "PASS" in report.format_text()


async def test_the_same_seed_gives_the_same_plan_and_canaries() -> None:
    cfg = config("ws://127.0.0.1:1/ws", users=30)
    assert make_plans(cfg, 3) == make_plans(cfg, 3)
    assert make_plans(cfg, 3) != make_plans(cfg, 4)
    plans = make_plans(cfg, 3)
    texts = [run.text for plan in plans for run in plan.runs]
    assert len(set(texts)) == len(texts)
    assert any(plan.colliding for plan in plans)
    assert all(plan.canary in run.text for plan in plans for run in plan.runs)


# -- (b) leaky servers ------------------------------------------------------------------


def _subject(request: WebSocketRequest) -> str:
    """The token's sub, unverified: these servers are about leaks, not auth."""
    for name, value in request.headers:
        if name.lower() == b"authorization":
            payload = value.split(b".")[1]
            padded = payload + b"=" * (-len(payload) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
            return str(claims["sub"])
    return "anonymous"


@attrs.define
class LeakyServer:
    """chat.v1 with one leak: ``broadcast``, ``shared-threads`` or ``global-runs``."""

    leak: str  # or "closer": no leak, but it closes each connection 1011 after a run starts
    step_s: float = 0.01
    connections: list[WebSocketConnection] = attrs.field(factory=list)
    threads: dict[str, list[str]] = attrs.field(factory=dict)
    runs: dict[str, tuple[WebSocketConnection, trio.CancelScope]] = attrs.field(factory=dict)

    async def handler(self, request: WebSocketRequest) -> None:
        user = _subject(request)
        ws = await request.accept(subprotocol="chat.v1")
        self.connections.append(ws)
        ready = {"type": "connection_ready", "connection_id": secrets.token_hex(8)}
        await ws.send_message(json.dumps({**ready, "user_id": user, "limits": {"max_runs": 4}}))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        message = json.loads(await ws.get_message())
                    except ConnectionClosed:
                        nursery.cancel_scope.cancel()
                        return
                    await self.on_message(ws, message, nursery)
        finally:
            self.connections.remove(ws)

    async def on_message(
        self, ws: WebSocketConnection, message: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        kind = message["type"]
        if kind == "ping":
            await _send(ws, {"type": "pong"})
        elif kind == "user_message":
            run_id = "run_" + secrets.token_urlsafe(12)
            self.runs[run_id] = (ws, trio.CancelScope())
            nursery.start_soon(self.run, ws, run_id, message)
        elif kind == "cancel":
            owner, scope = self.runs.get(message["run_id"], (None, None))
            if self.leak != "global-runs" and owner is not ws:
                scope = None  # the correct check; "global-runs" forgets it: the IDOR
            if scope is None:
                error = {"code": "run_not_found", "message": "no such run"}
                await _send(ws, {"type": "error", **error, "ref": message["run_id"]})
            else:
                scope.cancel()

    async def run(self, ws: WebSocketConnection, run_id: str, message: dict[str, Any]) -> None:
        thread = message.get("thread_id") or "thr_" + secrets.token_hex(6)
        seq = 0

        async def emit(kind: str, **fields: Any) -> None:
            nonlocal seq
            seq += 1
            event = {"type": kind, **fields, "run_id": run_id, "thread_id": thread, "seq": seq}
            targets = list(self.connections) if self.leak == "broadcast" else [ws]
            for target in targets:
                await _send(target, event)

        history = self.threads.setdefault(thread, [])  # keyed by a thread id users share
        await emit("agent_started", agent="leaky", client_id=message.get("client_id"))
        if self.leak == "closer":
            await ws.aclose(1011, "internal_error")
            return
        text = message["text"]
        with self.runs[run_id][1]:
            await trio.sleep(self.step_s)
            await emit("tool_executing", tool_name="echo", tool_input={"text": text})
            await trio.sleep(self.step_s)
            result = {"text": text, "history": list(history)}
            history.append(text)
            await emit("agent_completed", result=result)
            del self.runs[run_id]
            return
        del self.runs[run_id]
        await emit("run_cancelled", reason="cancelled_by_client")


async def _send(ws: WebSocketConnection, event: Mapping[str, Any]) -> None:
    with suppress(ConnectionClosed):
        await ws.send_message(json.dumps(event))


@asynccontextmanager
async def leaky_server(leak: str, step_s: float = 0.01) -> AsyncIterator[str]:
    leaky = LeakyServer(leak, step_s)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, leaky.handler, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}/ws"
        nursery.cancel_scope.cancel()


def _owned_by_others(report: AuditReport) -> None:
    """Evidence names the user who saw the leak and, where known, whose data it was."""
    for violation in report.violations:
        assert violation.evidence.startswith(violation.user), violation
        assert violation.owner != violation.user, violation
        if violation.kind == "foreign-canary":
            assert violation.owner is not None, violation


async def test_b_the_audit_catches_a_broadcasting_server() -> None:
    async with leaky_server("broadcast") as url:
        report = await run_audit(config(url, users=8, runs=2, drop_rate=0.0))
    assert report.exit_code == 1
    kinds = report.violation_kinds()
    assert {"foreign-canary", "foreign-run"} <= set(kinds), kinds
    _owned_by_others(report)
    canary = next(v for v in report.violations if v.kind == "foreign-canary")
    assert f"carries {canary.owner}'s" in canary.evidence
    assert canary.frame is not None
    assert canary.connection is not None
    run = next(v for v in report.violations if v.kind == "foreign-run")
    assert f"[run of {run.owner}]" in run.evidence  # whose run leaked, found across users
    assert "FAIL" in report.format_text()


async def test_b_the_audit_catches_history_keyed_by_a_shared_thread_id() -> None:
    # No random collisions: only the thread probes (a user writing into another
    # user's thread) can reveal that history is keyed by the bare thread id.
    cfg = config("", users=12, runs=3, collide_rate=0.0, idor_rate=0.3, drop_rate=0.0)
    async with leaky_server("shared-threads") as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.thread_probes > 0
    assert set(report.violation_kinds()) == {"foreign-canary"}, report.format_text()
    _owned_by_others(report)
    probers = {p.attacker: p.victim for p in report.probes}
    assert any(probers.get(v.user) == v.owner for v in report.violations)
    # With colliding ids ("main", "default", ...) users leak to each other without probes.
    cfg = config("", users=12, runs=3, collide_rate=1.0, idor_rate=0.0, drop_rate=0.0)
    async with leaky_server("shared-threads") as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.violation_kinds().get("foreign-canary", 0) > 0
    _owned_by_others(report)


async def test_b_the_audit_catches_cancel_by_run_id_of_any_user() -> None:
    cfg = config("", users=10, runs=2, idor_rate=0.5, cancel_rate=0.0, drop_rate=0.0)
    async with leaky_server("global-runs", step_s=0.4) as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    kinds = report.violation_kinds()
    assert report.idor_probes_live > 0
    assert {"idor-distinguishable", "idor-cancelled", "unrequested-cancel"} <= set(kinds), kinds
    _owned_by_others(report)
    probe = next(v for v in report.violations if v.kind == "idor-distinguishable")
    assert "got no reply" in probe.evidence
    assert "'run_not_found'" in probe.evidence
    cancelled = next(v for v in report.violations if v.kind == "idor-cancelled")
    assert f"after {cancelled.owner} sent cancel" in cancelled.evidence


async def test_unexpected_closes_are_anomalies_not_violations() -> None:
    async with leaky_server("closer") as url:
        report = await run_audit(config(url, users=5, runs=2, drop_rate=0.0, idor_rate=0.0))
    assert report.violations == (), report.format_text()
    kinds = report.anomaly_kinds()
    assert kinds.get("server-closed", 0) >= 5, kinds
    closed = next(a for a in report.anomalies if a.kind == "server-closed")
    assert "1011 internal_error" in closed.detail
    assert report.runs_interrupted == report.runs_started > 0
    assert "protocol anomalies (not isolation violations)" in report.format_text()
    assert report.exit_code == 0


# -- the pieces -----------------------------------------------------------------------


def test_a_lookalike_id_keeps_the_shape() -> None:
    bogus = lookalike_id("run_Ab3-x_9Z", random.Random(1))
    assert bogus.startswith("run_")
    assert len(bogus) == len("run_Ab3-x_9Z")
    assert bogus != "run_Ab3-x_9Z"
    assert [c.isdigit() for c in bogus] == [c.isdigit() for c in "run_Ab3-x_9Z"]


def test_client_limits_follow_what_the_server_advertises() -> None:
    ready = {"limits": {"max_runs": 4, "rate_per_s": 20.0, "rate_burst": 40}}
    assert Limits.from_ready(ready, None) == Limits(max_runs=4, rate_per_s=10.0, burst=10)
    assert Limits.from_ready({}, None) == Limits(max_runs=None, rate_per_s=10.0, burst=1)
    assert Limits.from_ready(ready, 3.0).rate_per_s == 3.0
    assert Limits.from_ready({"limits": {"rate_per_s": "x"}}, None).rate_per_s == 10.0


def test_endpoints_parse_ws_and_wss_urls() -> None:
    plain = Endpoint.parse("ws://127.0.0.1:8000/ws?x=1")
    assert (plain.host, plain.port, plain.resource, plain.tls) == (
        "127.0.0.1",
        8000,
        "/ws?x=1",
        False,
    )
    secure = Endpoint.parse("wss://chat.example")
    assert (secure.port, secure.resource, secure.host_header, secure.tls) == (
        443,
        "/",
        "chat.example",
        True,
    )
    with pytest.raises(ValueError, match="not a ws"):
        Endpoint.parse("http://x/ws")


def test_reply_shapes_ignore_only_the_echoed_id() -> None:
    base = {"type": "error", "code": "run_not_found", "message": "no such run"}
    assert reply_shape({**base, "ref": "r1"}, "r1") == reply_shape({**base, "ref": "r2"}, "r2")
    assert reply_shape({**base, "message": "r1 gone"}, "r1") == reply_shape(
        {**base, "message": "r2 gone"}, "r2"
    )
    leaky = {**base, "message": "not your run", "ref": "r1"}
    assert reply_shape(leaky, "r1") != reply_shape({**base, "ref": "r2"}, "r2")
    assert reply_shape(None, "r1") != reply_shape({**base, "ref": "r2"}, "r2")


async def test_tokens_from_a_command() -> None:
    mint = (
        "from joserfc import jwt; from joserfc.jwk import OctKey; import sys, time; "
        f"print('banner'); print(jwt.encode({{'alg': 'HS256'}}, {{'sub': sys.argv[1], "
        f"'exp': int(time.time()) + 600}}, OctKey.import_key({SECRET!r})))"
    )
    command = f"{sys.executable} -c {json.dumps(mint)} {{sub}}"
    async with our_server(agent_delay_ms=1) as url:
        report = await run_audit(
            config(url, users=3, runs=1, jwt_secret=None, token_command=command)
        )
        assert report.exit_code == 0, report.format_text()
        failing = config(url, users=2, jwt_secret=None, token_command="false {sub}")
        with pytest.raises(AuditError, match="--token-command failed"):
            await run_audit(failing)


async def test_a_wrong_secret_is_a_clear_usage_error() -> None:
    async with our_server() as url:
        with pytest.raises(AuditError, match="HTTP 401"):
            await run_audit(config(url, jwt_secret=b"w" * 40))


# -- (c) the command line ------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m isolation")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["audit", *argv])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_c_cli_exit_0_on_our_server_and_1_on_a_leaky_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    common = ("--users", "6", "--runs", "2", "--seed", "5", "--timeout", "20")
    async with our_server(agent_delay_ms=1) as url:
        args = parse("--url", url, "--jwt-secret-file", str(secret_file), *common)
        assert await trio.to_thread.run_sync(run_audit_command, args) == 0
    assert "PASS: no isolation violation" in capsys.readouterr().out

    report_path = tmp_path / "report.json"
    async with leaky_server("broadcast") as url:
        args = parse(
            "--url", url, "--jwt-secret", SECRET.decode(), "--json", str(report_path), *common
        )
        assert await trio.to_thread.run_sync(run_audit_command, args) == 1
    out = capsys.readouterr().out
    data = json.loads(report_path.read_text())
    assert data["exit_code"] == 1
    assert len(data["violations"]) == data["violation_count"] > 20
    assert out.count("\n  - ") >= 20  # the first 20 violations are printed
    assert "more (all kept in --json)" in out


def test_c_cli_exit_2_on_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit_command(parse("--url", "http://x/ws", "--jwt-secret", "s")) == 2
    assert "--url must be ws://" in capsys.readouterr().err
    assert run_audit_command(parse("--url", "ws://x:99999/ws", "--jwt-secret", "s")) == 2
    assert "--url must be ws://" in capsys.readouterr().err
    assert run_audit_command(parse("--url", "ws://127.0.0.1:9/ws")) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert run_audit_command(parse("--url", "ws://h/ws", "--jwt-secret-file", "/nonexistent")) == 2
    assert "--jwt-secret-file" in capsys.readouterr().err
    args = parse("--url", "ws://h/ws", "--jwt-secret", "s", "--cancel-rate", "2")
    assert run_audit_command(args) == 2
    assert "--cancel-rate must be between 0 and 1" in capsys.readouterr().err


async def test_c_cli_exit_2_when_nothing_listens() -> None:
    code = (
        "import argparse, sys\n"
        "from isolation.audit._cli import add_audit_parser\n"
        "parser = argparse.ArgumentParser(prog='python -m isolation')\n"
        "add_audit_parser(parser.add_subparsers(dest='command'))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args))\n"
    )
    url = f"ws://127.0.0.1:{_closed_port()}/ws"
    done = await trio.run_process(
        [sys.executable, "-c", code, "audit", "--url", url, "--jwt-secret", "s" * 32],
        cwd=REPO,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot connect to {url}" in done.stderr.decode()
    assert done.stdout == b""


def test_c_the_report_is_json_serialisable_with_everything() -> None:
    report = AuditReport(
        url="ws://x",
        seed=1,
        users=0,
        runs_per_user=1,
        connections=0,
        connect_failures=0,
        connect_retries=0,
        runs_planned=0,
        runs_sent=0,
        runs_started=0,
        runs_completed=0,
        runs_cancelled=0,
        runs_errored=0,
        runs_rejected=0,
        runs_interrupted=0,
        runs_lost=0,
        cancels_sent=0,
        frames_checked=0,
        idor_probes=0,
        idor_probes_live=0,
        thread_probes=0,
        drops=0,
        drops_planned=0,
        wall_time_s=0.0,
        complete=False,
        violation_count=0,
        violations=(),
        anomaly_count=0,
        anomalies=(),
    )
    assert report.exit_code == 2
    assert json.loads(report.to_json())["exit_code"] == 2
    assert "INCOMPLETE" in report.format_text()


def test_the_cli_module_is_importable_without_the_app_package() -> None:
    # A foreign server's operator installs the isolation package; app must not be needed.
    code = (
        "import sys; sys.modules['app'] = None\n"
        "import isolation.audit._cli, isolation.audit._run\n"
        "assert 'app' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
