"""Mutants: each deliberate leak is found by the checks it should be found by.

For every mutant of the catalogue: it still applies to ``app/`` (every anchor exactly
once), the static checker reports exactly the expected codes on the mutated copy, and
the runtime audit -- against the mutated copy started as a real server subprocess --
reports the mutant's leak (or, for a mutant expected to pass unseen, nothing). The
unmodified app is clean in both. The generated table in ``docs/isolation.md`` must
match the catalogue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from isolation import CODES
from isolation._cli import main
from isolation.audit._ledger import VIOLATION_KINDS
from isolation.mutants import _cli as mutants_cli
from isolation.mutants._catalogue import CATALOGUE, CONTROL, by_name
from isolation.mutants._model import Mutant, MutantError, Replacement
from isolation.mutants._report import (
    BEGIN_MARKER,
    END_MARKER,
    HEADER,
    expected_columns,
    format_markdown,
    format_text,
    generated_block,
    replace_block,
)
from isolation.mutants._runner import (
    Attempt,
    MutantOptions,
    MutantResult,
    RuntimeOutcome,
    StaticOutcome,
    apply_replacements,
    audit_copy,
    build_copy,
    check_static,
)
from isolation.static import Finding

DOC: Final = Path(__file__).resolve().parents[3] / "docs" / "isolation.md"
#: Small audits: 24 users x 3 runs against a 50 ms agent; one 1 s attempt, then in full.
OPTIONS: Final = MutantOptions(users=24, runs=3, agent_delay_ms=50.0, budgets_s=(1.0,))
ALL: Final = (CONTROL, *CATALOGUE)


def ids(mutant: Mutant) -> str:
    return mutant.name


@pytest.fixture(scope="module")
def control_static(tmp_path_factory: pytest.TempPathFactory) -> StaticOutcome:
    copy = build_copy(CONTROL, tmp_path_factory.mktemp("control"))
    return check_static(copy)


# -- the catalogue ------------------------------------------------------------------------


def test_the_catalogue_is_well_formed() -> None:
    names = [mutant.name for mutant in CATALOGUE]
    assert len(names) >= 6
    assert len(set(names)) == len(names)
    assert CONTROL.name not in names
    for mutant in CATALOGUE:
        assert mutant.replacements, mutant.name
        assert mutant.story, mutant.name
        assert "\n" not in mutant.story, mutant.name
        assert mutant.expected_static <= set(CODES), mutant.name
        assert mutant.signature <= set(VIOLATION_KINDS), mutant.name
        assert bool(mutant.signature) == mutant.expected_runtime, mutant.name
        assert all(r.old != r.new for r in mutant.replacements), mutant.name
    # A mix: one leak only the runtime audit sees, one only the static checker sees.
    assert any(m.expected_runtime and not m.expected_static for m in CATALOGUE)
    assert any(m.expected_static and not m.expected_runtime for m in CATALOGUE)
    assert by_name(["idor_cancel", "singleton_manager"]) == tuple(
        m for m in CATALOGUE if m.name in ("singleton_manager", "idor_cancel")
    )
    with pytest.raises(KeyError):
        by_name(["nope"])


# -- applying and the static check ------------------------------------------------------------


def test_the_control_is_statically_clean(control_static: StaticOutcome) -> None:
    assert control_static.findings == (), control_static.lines()


@pytest.mark.parametrize("mutant", CATALOGUE, ids=ids)
def test_the_mutant_applies_and_the_static_check_reports_exactly_the_expected_codes(
    mutant: Mutant, tmp_path: Path, control_static: StaticOutcome
) -> None:
    copy = build_copy(mutant, tmp_path)
    for replacement in mutant.replacements:
        assert replacement.new in (copy / replacement.file).read_text(encoding="utf-8")
    outcome = check_static(copy, control_static.baseline())
    assert outcome.codes == mutant.expected_static, outcome.lines()
    assert all(f.path.startswith("app/") for f in outcome.findings)
    assert {f.path.removeprefix("app/") for f in outcome.findings} <= set(mutant.files)


def test_an_anchor_that_no_longer_matches_fails_loudly() -> None:
    files = {"_agent.py": "a = 1\nb = 2\nb = 2\n"}
    missing = Replacement("_agent.py", "c = 3\n", "c = 4\n")
    with pytest.raises(MutantError, match=r"mutant m no longer applies to app/_agent.py"):
        apply_replacements("m", dict(files), [missing])
    twice = Replacement("_agent.py", "b = 2\n", "b = 3\n")
    with pytest.raises(MutantError, match=r"anchor found 2 times: 'b = 2'"):
        apply_replacements("m", dict(files), [twice])
    gone = Replacement("_gone.py", "x", "y")
    with pytest.raises(MutantError, match=r"app/_gone.py \(file missing"):
        apply_replacements("m", dict(files), [gone])
    changed = dict(files)
    apply_replacements("m", changed, [Replacement("_agent.py", "a = 1\n", "a = 2\n")])
    assert changed == {"_agent.py": "a = 2\nb = 2\nb = 2\n"}


def test_build_copy_fails_loudly_on_a_stale_mutant(tmp_path: Path) -> None:
    stale = attrs.evolve(
        CATALOGUE[0], replacements=(Replacement("_agent.py", "no such text\n", "x\n"),)
    )
    with pytest.raises(MutantError, match=rf"mutant {stale.name} no longer applies"):
        build_copy(stale, tmp_path)


# -- the runtime audit ---------------------------------------------------------------------


async def test_a_server_that_does_not_start_fails_loudly(tmp_path: Path) -> None:
    broken = Mutant(
        name="broken",
        story="the server dies at startup",
        replacements=(
            Replacement("__main__.py", "sys.exit(main())", "sys.exit('broken on purpose')"),
        ),
        expected_static=frozenset(),
        expected_runtime=False,
    )
    build_copy(broken, tmp_path)
    with pytest.raises(MutantError, match=r"exited with status 1 before listening(.|\n)*broken"):
        await audit_copy(tmp_path, OPTIONS, broken)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mutant", ALL, ids=ids)
async def test_the_runtime_audit_catches_the_mutant_as_expected(
    mutant: Mutant, tmp_path: Path
) -> None:
    build_copy(mutant, tmp_path)
    outcome = await audit_copy(tmp_path, OPTIONS, mutant)
    result = MutantResult(
        mutant=mutant, static=StaticOutcome(frozenset(), (), 0.0), runtime=outcome
    )
    shown = f"{outcome.kinds} {outcome.error} {outcome.attempts} {outcome.evidence}"
    assert outcome.error is None, shown
    assert result.runtime_as_expected, shown
    if mutant.expected_runtime:
        assert outcome.caught, shown
        assert outcome.evidence, shown
        assert outcome.detect_s is not None, shown
        assert mutant.signature & outcome.kind_names, shown
    else:
        assert not outcome.caught, shown
        assert outcome.attempts[-1].complete, shown
        assert outcome.attempts[-1].violation_count == 0, shown


# -- report and the generated block of docs/isolation.md -----------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def _rows(block: str) -> dict[str, list[str]]:
    rows = {}
    for line in block.splitlines():
        if line.startswith("| `"):
            cells = _cells(line)
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_committed_table_matches_the_catalogue() -> None:
    block = generated_block(DOC.read_text(encoding="utf-8"))
    header = next(line for line in block.splitlines() if line.startswith("| mutant"))
    assert tuple(_cells(header)) == HEADER
    rows = _rows(block)
    assert list(rows) == [mutant.name for mutant in ALL]
    column = {name: index for index, name in enumerate(HEADER)}
    for mutant in ALL:
        cells = rows[mutant.name]
        static_expected, runtime_expected = expected_columns(mutant)
        assert cells[column["static: expected"]] == static_expected, mutant.name
        assert cells[column["runtime: expected"]] == runtime_expected, mutant.name
        # What was measured agrees with what was expected (timings are not compared).
        assert cells[column["static: measured"]] == static_expected, mutant.name
        measured = cells[column["runtime: measured"]]
        if mutant is CONTROL:
            assert measured == "clean"
        elif mutant.expected_runtime:
            assert measured.startswith("caught: "), mutant.name
            kinds = {part.rsplit(" ", 1)[0] for part in measured[8:].split(", ")}
            assert kinds & mutant.signature, mutant.name
        else:
            assert measured == "not caught", mutant.name
        assert cells[column["verdict"]] == "as expected", mutant.name
        assert f"- **`{mutant.name}`**: {mutant.story}." in block


def _fake(mutant: Mutant, *, caught: bool) -> MutantResult:
    kinds = tuple((kind, 2) for kind in sorted(mutant.signature or {"foreign-canary"}))
    attempt = Attempt(
        budget_s=None,
        wall_time_s=0.5,
        complete=True,
        violation_count=2 * len(kinds) if caught else 0,
        kinds=kinds if caught else (),
    )
    runtime = RuntimeOutcome(
        caught=caught,
        kinds=attempt.kinds,
        evidence="u1 conn 1 frame 3: [foreign-canary] a | b" if caught else None,
        detect_s=0.5 if caught else None,
        caught_budget_s=None,
        clean=not caught,
        attempts=(attempt,),
    )
    findings = tuple(
        Finding(f"app/{mutant.files[0]}", 1, 1, code, "message") for code in mutant.expected_static
    )
    static = StaticOutcome(mutant.expected_static, findings, 0.1)
    return MutantResult(mutant=mutant, static=static, runtime=runtime)


def test_the_markdown_round_trips_through_the_doc_block(tmp_path: Path) -> None:
    results = [_fake(m, caught=m.expected_runtime) for m in ALL]
    markdown = format_markdown(results, OPTIONS)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nbefore\n{BEGIN_MARKER}\nold\n{END_MARKER}\nafter\n")
    replace_block(doc, markdown)
    replace_block(doc, markdown)  # idempotent
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n" + BEGIN_MARKER + "\n")
    assert text.endswith(END_MARKER + "\nafter\n")
    assert "old" not in text
    rows = _rows(generated_block(text))
    assert list(rows) == [m.name for m in ALL]
    assert all(cells[-1] == "as expected" for cells in rows.values())
    assert "a \\| b" not in markdown  # evidence is listed below the table, not in a cell
    assert "`u1 conn 1 frame 3: [foreign-canary] a | b`" in markdown
    text_table = format_text(results, OPTIONS)
    assert f"all {len(CATALOGUE)} mutants caught as expected" in text_table
    missed = [_fake(m, caught=False) for m in ALL]
    assert "UNEXPECTED: " + CATALOGUE[0].name in format_text(missed, OPTIONS)
    bare = tmp_path / "bare.md"
    bare.write_text("# no block here\n")
    with pytest.raises(ValueError, match="mutants:begin"):
        replace_block(bare, markdown)
    assert bare.read_text() == "# no block here\n"


# -- command line -----------------------------------------------------------------------------


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fake_run(
        mutants: Sequence[Mutant], options: MutantOptions, progress: Any
    ) -> tuple[MutantResult, ...]:
        results = tuple(_fake(m, caught=m.expected_runtime) for m in (CONTROL, *mutants))
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
        raise MutantError("mutant x no longer applies to app/_agent.py (anchor found 0 times)")

    monkeypatch.setattr(mutants_cli, "run_mutants", stale)
    assert main(["mutants", "--only", "idor_cancel"]) == 1
    assert "error: mutant x no longer applies to app/_agent.py" in capsys.readouterr().err

    async def missed(
        mutants: Sequence[Mutant], options: MutantOptions, progress: Any
    ) -> tuple[MutantResult, ...]:
        return tuple(_fake(m, caught=False) for m in (CONTROL, *mutants))

    monkeypatch.setattr(mutants_cli, "run_mutants", missed)
    before = doc.read_text()
    assert main(["mutants", "--update-doc", str(doc)]) == 1
    out, err = capsys.readouterr()
    assert "UNEXPECTED" in out
    assert "not updating" in err
    assert doc.read_text() == before
