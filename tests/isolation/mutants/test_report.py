"""The mutant table: the generated table in ``docs/isolation.md`` matches the catalogue,
and the Markdown round-trips through a doc's generated block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from isolation.mutants._catalogue import CATALOGUE, CONTROL
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
    MutantOptions,
)

if TYPE_CHECKING:
    from tests.isolation.mutants.conftest import FakeResult


DOC: Final = Path(__file__).resolve().parents[3] / "docs" / "isolation.md"
#: Small audits: 24 users x 3 runs against a 50 ms agent; one 1 s attempt, then in full.
OPTIONS: Final = MutantOptions(users=24, runs=3, agent_delay_ms=50.0, budgets_s=(1.0,))
ALL: Final = (CONTROL, *CATALOGUE)


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


def test_the_markdown_round_trips_through_the_doc_block(
    tmp_path: Path, fake_result: FakeResult
) -> None:
    results = [fake_result(m, caught=m.expected_runtime) for m in ALL]
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
    missed = [fake_result(m, caught=False) for m in ALL]
    assert "UNEXPECTED: " + CATALOGUE[0].name in format_text(missed, OPTIONS)
    bare = tmp_path / "bare.md"
    bare.write_text("# no block here\n")
    with pytest.raises(ValueError, match="mutants:begin"):
        replace_block(bare, markdown)
    assert bare.read_text() == "# no block here\n"
