"""``python -m bench run``'s options: the scale-out runs' ``--stores redis`` and ``--workers``,
and the think times of the plan (``--think-ms``, the default run's think-0 cell)."""

from __future__ import annotations

import pytest

from bench._cli import _parser, main, run_plan
from bench.load import Plan


def test_stores_take_redis_and_workers_take_a_list() -> None:
    args = _parser().parse_args(["run", "--stores", "sqlite,redis", "--workers", "1,2"])
    assert args.stores == ("sqlite", "redis")
    assert args.workers == (1, 2)
    assert _parser().parse_args(["run"]).workers == (1,)


@pytest.mark.parametrize("argv", [["--stores", "mongo"], ["--workers", "0"], ["--workers", "x"]])
def test_bad_stores_or_workers_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["run", *argv])
    assert exc.value.code == 2


def test_an_unknown_server_name_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--servers", "enclave-lean+sqlite+w2"]) == 2
    assert "unknown server(s) enclave-lean+sqlite+w2" in capsys.readouterr().err


def _plan(*argv: str) -> Plan:
    return run_plan(_parser().parse_args(["run", *argv]), ())


def test_think_ms_takes_a_list() -> None:
    assert _parser().parse_args(["run", "--think-ms", "100,0"]).think_ms == (100.0, 0.0)
    assert _parser().parse_args(["run", "--think-ms", "100"]).think_ms == (100.0,)
    assert _parser().parse_args(["run"]).think_ms is None


@pytest.mark.parametrize("value", ["x", "100,-1", "nan", "inf", ","])
def test_bad_think_times_are_usage_errors(value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["run", "--think-ms", value])
    assert exc.value.code == 2


def test_the_default_run_adds_think_0_at_1000_users_only() -> None:
    assert _plan().cells() == ((100, 100.0), (1000, 100.0), (1000, 0.0), (5000, 100.0))
    assert _plan("--servers", "fastapi", "--rounds", "3").extra_cells == ((1000, 0.0),)


@pytest.mark.parametrize(
    ("argv", "cells"),
    [
        (["--quick"], ((20, 100.0), (200, 100.0))),  # a quick run stays quick
        (["--think-ms", "100"], ((100, 100.0), (1000, 100.0), (5000, 100.0))),  # as before
        (["--users", "1000"], ((1000, 100.0),)),  # given user counts: exactly those
        (["--users", "50", "--think-ms", "100,0"], ((50, 100.0), (50, 0.0))),
        (["--quick", "--think-ms", "0,100"], ((20, 0.0), (20, 100.0), (200, 0.0), (200, 100.0))),
    ],
)
def test_given_users_or_think_times_are_measured_exactly(
    argv: list[str], cells: tuple[tuple[int, float], ...]
) -> None:
    assert _plan(*argv).cells() == cells
