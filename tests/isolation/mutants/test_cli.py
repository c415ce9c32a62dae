"""``python -m isolation mutants``: listing, usage errors, output files and the doc update."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from isolation._cli import main
from isolation.mutants import _cli as mutants_cli
from isolation.mutants._catalogue import CATALOGUE, CONTROL
from isolation.mutants._model import Mutant, MutantError
from isolation.mutants._report import (
    BEGIN_MARKER,
    END_MARKER,
)
from isolation.mutants._runner import (
    MutantOptions,
    MutantResult,
)

if TYPE_CHECKING:
    from tests.isolation.mutants.conftest import FakeResult

ALL: Final = (CONTROL, *CATALOGUE)


def test_list_prints_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutants", "--list"]) == 0
    out = capsys.readouterr().out
    for mutant in CATALOGUE:
        assert mutant.name in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mutants", "--only", "nope"], "unknown mutant 'nope'"),
        (["mutants", "--only", "idor_cancel", "--update-doc", "x.md"], "whole catalogue"),
        (["mutants", "--users", "0"], "must be >= 1"),
        (["mutants", "--budgets", "1,x"], "not a list of seconds"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_command_prints_writes_and_updates_the_doc(
    fake_result: FakeResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def fake_run(
        mutants: Sequence[Mutant], options: MutantOptions, progress: Any
    ) -> tuple[MutantResult, ...]:
        results = tuple(fake_result(m, caught=m.expected_runtime) for m in (CONTROL, *mutants))
        for result in results:
            progress(result)
        return results

    monkeypatch.setattr(mutants_cli, "run_mutants", fake_run)
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN_MARKER}\n{END_MARKER}\n")
    md, js = tmp_path / "m.md", tmp_path / "m.json"
    argv = ["mutants", "--markdown", str(md), "--json", str(js), "--update-doc", str(doc)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"all {len(CATALOGUE)} mutants caught as expected" in out
    assert "mutants: control: static none; runtime clean" in err
    assert md.read_text() in doc.read_text()
    data = json.loads(js.read_text())
    assert data["as_expected"] is True
    assert [r["name"] for r in data["results"]] == [m.name for m in ALL]

    async def stale(*args: Any) -> tuple[MutantResult, ...]:
        raise MutantError("mutant x no longer applies to app/agents/_agent.py (anchor: 0 times)")

    monkeypatch.setattr(mutants_cli, "run_mutants", stale)
    assert main(["mutants", "--only", "idor_cancel"]) == 1
    assert "error: mutant x no longer applies to app/agents/_agent.py" in capsys.readouterr().err

    async def missed(
        mutants: Sequence[Mutant], options: MutantOptions, progress: Any
    ) -> tuple[MutantResult, ...]:
        return tuple(fake_result(m, caught=False) for m in (CONTROL, *mutants))

    monkeypatch.setattr(mutants_cli, "run_mutants", missed)
    before = doc.read_text()
    assert main(["mutants", "--update-doc", str(doc)]) == 1
    out, err = capsys.readouterr()
    assert "UNEXPECTED" in out
    assert "not updating" in err
    assert doc.read_text() == before
