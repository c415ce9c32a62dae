"""``python -m isolation check``: output formats and exit codes, in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import isolation
from isolation import CODES
from isolation._cli import EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE, main

LEAKY = """\
import functools
from contextvars import ContextVar

connections = {}
ctx = ContextVar("ctx", default={})


def register(user_id, ws):
    connections[user_id] = ws


@functools.lru_cache
def load_profile(user_id):
    return {"id": user_id}
"""
CLEAN = """\
from typing import Final

LIMIT: Final = 10


def handle(user_id: str) -> dict[str, str]:
    return {"id": user_id}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "leaky.py").write_text(LEAKY)
    (tmp_path / "pkg" / "clean.py").write_text(CLEAN)
    return tmp_path


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The checker must work from any directory, on any path: run it outside the repo.
    env = {**os.environ, "PYTHONPATH": str(Path(isolation.__file__).parent.parent)}
    return subprocess.run(
        [sys.executable, "-m", "isolation", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- in process ------------------------------------------------------------------


def test_findings_are_printed_one_per_line_and_exit_1(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaky = str(project / "pkg" / "leaky.py")
    assert main(["check", str(project)]) == EXIT_FINDINGS
    out, err = capsys.readouterr()
    assert [" ".join(line.split(" ")[:2]) for line in out.splitlines()] == [
        f"{leaky}:4:1 ISO101",
        f"{leaky}:5:33 ISO106",
        f"{leaky}:12:2 ISO104",
    ]
    assert "mutated in register() on line 9" in out
    assert err.strip() == "3 finding(s) in 2 files"


def test_clean_paths_print_nothing_on_stdout_and_exit_0(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(project / "pkg" / "clean.py")]) == EXIT_CLEAN
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "no findings in 1 file"


def test_json_format(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--format", "json", str(project)]) == EXIT_FINDINGS
    data = json.loads(capsys.readouterr().out)
    assert [(Path(d["path"]).name, d["line"], d["col"], d["code"]) for d in data] == [
        ("leaky.py", 4, 1, "ISO101"),
        ("leaky.py", 5, 33, "ISO106"),
        ("leaky.py", 12, 2, "ISO104"),
    ]
    assert all(set(d) == {"path", "line", "col", "code", "message"} for d in data)


def test_json_format_when_clean_is_an_empty_list(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--format=json", str(project / "pkg" / "clean.py")]) == EXIT_CLEAN
    assert json.loads(capsys.readouterr().out) == []


def test_syntax_error_is_a_finding_not_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("def broken(:\n")
    assert main(["check", str(tmp_path)]) == EXIT_FINDINGS
    assert " ISO000 syntax error" in capsys.readouterr().out


def test_missing_path_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope")]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "nope" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["check"], ["check", "--bogus", "."], ["check", "--format", "xml", "."], ["nope"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_help_lists_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == EXIT_CLEAN
    out = capsys.readouterr().out
    for code, text in CODES.items():
        assert f"{code}  {text}" in out


def test_list_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list-codes"]) == EXIT_CLEAN
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(CODES)
    assert main(["check", "--list-codes", "--format", "json"]) == EXIT_CLEAN
    assert json.loads(capsys.readouterr().out) == dict(CODES)


def test_mutable_option_adds_constructors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "events.py"
    target.write_text("from lib import EventManager\n\nMANAGER = EventManager()\n")
    assert main(["check", str(target)]) == EXIT_CLEAN
    assert main(["check", "--mutable", "lib.EventManager", str(target)]) == EXIT_FINDINGS
    assert ":3:1 ISO101 " in capsys.readouterr().out


# -- as a subprocess -----------------------------------------------------------------


def test_subprocess_exit_codes_and_json(project: Path) -> None:
    clean = run_module("check", "pkg/clean.py", cwd=project)
    assert (clean.returncode, clean.stdout) == (0, "")

    leaky = run_module("check", "pkg", cwd=project)
    assert leaky.returncode == 1, leaky.stderr
    assert leaky.stdout.splitlines()[0].startswith(f"{os.path.join('pkg', 'leaky.py')}:4:1 ISO101 ")

    as_json = run_module("check", "--format", "json", "pkg", cwd=project)
    assert as_json.returncode == 1
    assert [d["code"] for d in json.loads(as_json.stdout)] == ["ISO101", "ISO106", "ISO104"]

    missing = run_module("check", "missing", cwd=project)
    assert missing.returncode == 2
    assert "missing" in missing.stderr
