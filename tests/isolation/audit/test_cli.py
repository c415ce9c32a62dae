"""``python -m isolation audit``: exit codes, output, and no need for the app package."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest
import trio

from isolation.audit._cli import add_audit_parser, run_audit_command

if TYPE_CHECKING:
    from tests.isolation.audit.conftest import AuditKit


REPO: Final = Path(__file__).resolve().parents[3]


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
    kit: AuditKit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(kit.secret + b"\n")
    common = ("--users", "6", "--runs", "2", "--seed", "5", "--timeout", "20")
    async with kit.our_server(agent_delay_ms=1) as url:
        args = parse("--url", url, "--jwt-secret-file", str(secret_file), *common)
        assert await trio.to_thread.run_sync(run_audit_command, args) == 0
    assert "PASS: no isolation violation" in capsys.readouterr().out

    report_path = tmp_path / "report.json"
    async with kit.leaky_server("broadcast") as url:
        args = parse(
            "--url", url, "--jwt-secret", kit.secret.decode(), "--json", str(report_path), *common
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


def test_the_cli_module_is_importable_without_the_app_package() -> None:
    # A foreign server's operator installs the isolation package; app must not be needed.
    code = (
        "import sys; sys.modules['app'] = None\n"
        "import isolation.audit._cli, isolation.audit._run\n"
        "assert 'app' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
