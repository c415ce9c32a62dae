"""Finding Python 2.7 and building the suite's virtualenv, with fakes (no 2.7 needed)."""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.conformance._python2 import (
    REQUIREMENTS,
    VIRTUALENV,
    Python2NotFound,
    candidates,
    ensure_venv,
    find_python2,
    is_python27,
)


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """PATH with python2.7 (a shim of an unselected version) and a pyenv root with two 2.7s."""
    bin_dir = tmp_path / "bin"
    script(bin_dir / "python2.7", "echo 'pyenv: python2.7: command not found' >&2; exit 127")
    root = tmp_path / "pyenv"
    script(root / "versions" / "2.7.17" / "bin" / "python", "echo 2.7")
    script(root / "versions" / "2.7.18" / "bin" / "python", "echo 2.7")
    script(root / "versions" / "3.11.7" / "bin" / "python", "echo 3.11")
    return {"PATH": str(bin_dir), "PYENV_ROOT": str(root), "HOME": str(tmp_path)}


def test_candidates_in_order(world: dict[str, str]) -> None:
    root = world["PYENV_ROOT"]
    found = candidates("/opt/py27/bin/python", {**world, "AUTOBAHN_PYTHON2": "/x/python"})
    assert found == [
        "/opt/py27/bin/python",
        "/x/python",
        str(Path(world["PATH"]) / "python2.7"),
        f"{root}/versions/2.7.18/bin/python",
        f"{root}/versions/2.7.17/bin/python",
    ]


def test_home_pyenv_is_the_last_resort(tmp_path: Path) -> None:
    script(tmp_path / ".pyenv" / "versions" / "2.7.18" / "bin" / "python", "echo 2.7")
    found = candidates(None, {"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert found == [str(tmp_path / ".pyenv" / "versions" / "2.7.18" / "bin" / "python")]


def test_a_failing_shim_is_skipped(world: dict[str, str]) -> None:
    assert not is_python27(str(Path(world["PATH"]) / "python2.7"))
    assert find_python2(None, world) == f"{world['PYENV_ROOT']}/versions/2.7.18/bin/python"


def test_is_python27(tmp_path: Path) -> None:
    assert is_python27(str(script(tmp_path / "two", "echo 2.7")))
    assert not is_python27(str(script(tmp_path / "three", "echo 3.11")))
    assert not is_python27(str(tmp_path / "missing"))


def test_nothing_found_says_where_it_looked(tmp_path: Path) -> None:
    environ = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    with pytest.raises(Python2NotFound, match="--python2"):
        find_python2(None, environ)
    with pytest.raises(Python2NotFound, match="/nope/python"):
        find_python2("/nope/python", environ, check=lambda _: False)


def test_requirements_pin_every_package_exactly() -> None:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins
    assert all("==" in pin and not pin.startswith("-") for pin in pins)
    assert "autobahntestsuite==0.8.2" in pins
    assert VIRTUALENV.startswith("virtualenv==")


class Recorder:
    """Stands in for the build steps: records them and makes the venv's wstest."""

    def __init__(self, venv: Path) -> None:
        self.venv = venv
        self.steps: list[list[str]] = []

    def __call__(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None) -> None:
        self.steps.append(list(argv))
        script(self.venv / "bin" / "wstest", "exit 0")


def test_the_venv_is_built_once_and_rebuilt_when_pins_change(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("autobahntestsuite==0.8.2\n")
    record = Recorder(venv)
    wstest = ensure_venv(venv, "/py27", requirements=requirements, say=lambda _: None, run=record)
    assert wstest == venv / "bin" / "wstest"
    assert [step[:3] for step in record.steps] == [
        ["/py27", "-m", "pip"],
        ["/py27", "-m", "virtualenv"],
        [str(venv / "bin" / "python"), "-m", "pip"],
    ]
    assert VIRTUALENV in record.steps[0]
    assert record.steps[2][-2:] == ["-r", str(requirements)]
    assert "--no-deps" in record.steps[2]

    ensure_venv(venv, "/py27", requirements=requirements, say=lambda _: None, run=record)
    assert len(record.steps) == 3  # the stamp is current

    requirements.write_text("autobahntestsuite==0.8.2\nsix==1.16.0\n")
    ensure_venv(venv, "/py27", requirements=requirements, say=lambda _: None, run=record)
    assert len(record.steps) == 6


def test_a_failed_step_reports_the_log_tail(tmp_path: Path) -> None:
    from tests.conformance._python2 import _step

    log = tmp_path / "build.log"
    failing = script(tmp_path / "fail", "echo 'no matching distribution'; exit 3")
    with pytest.raises(RuntimeError, match="exited 3") as caught:
        _step([str(failing)], log)
    assert "no matching distribution" in str(caught.value)
