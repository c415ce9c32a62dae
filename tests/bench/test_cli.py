"""``python -m bench run``'s options of the scale-out runs: ``--stores redis``, ``--workers``."""

from __future__ import annotations

import pytest

from bench._cli import _parser, main


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
