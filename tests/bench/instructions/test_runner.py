"""``python -m bench instructions``: the counting, the table, and one tiny run under callgrind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from app.testing import find_component
from bench._cli import main
from bench.harness import SERVERS
from bench.harness._progress import Progress
from bench.instructions import (
    InstructionsPlan,
    callgrind_total,
    per_turn,
    render_markdown,
    run_instructions,
)


def test_callgrind_total_is_the_last_totals_line(tmp_path: Path) -> None:
    out = tmp_path / "cg.out"
    out.write_bytes(b"version: 1\nevents: Ir\nfl=x\n1 5\nsummary: 1200\ntotals: 1234567\n")
    assert callgrind_total(out) == 1234567
    out.write_bytes(b"events: Ir\nsummary: 99\n")
    assert callgrind_total(out) == 99
    out.write_bytes(b"events: Ir\n")
    with pytest.raises(ValueError, match="no totals"):
        callgrind_total(out)


def test_per_turn_is_the_difference_over_the_turns() -> None:
    assert per_turn(1_500_000, 500_000, 4) == 250_000
    with pytest.raises(ValueError, match="positive"):
        per_turn(1, 0, 0)


def test_the_table_compares_each_server_with_bare_trio() -> None:
    plan = InstructionsPlan(servers=(SERVERS["enclave-lean"], SERVERS["bare-trio"]))
    rows: list[dict[str, Any]] = [
        {"server": "enclave-lean", "label": "enclave (lean)", "per_turn": 575_000.0},
        {"server": "bare-trio", "label": "bare Trio", "per_turn": 460_000.0},
        {"server": "fastapi", "label": "FastAPI+uvicorn", "invalid": "3 of 4 turns completed"},
    ]
    text = render_markdown(plan, rows)
    assert "40 users x 25 turns" in text
    assert "| enclave (lean) | 575k | +25% |" in text
    assert "| bare Trio | 460k | - |" in text
    assert "| FastAPI+uvicorn | 3 of 4 turns completed | |" in text


def test_a_tiny_run_counts_a_turn_of_bare_trio(tmp_path: Path) -> None:
    find_component("valgrind", "valgrind")
    # Enough turns that they outweigh how much start-up and shutdown vary between the two
    # runs (a few million instructions): 2 users x 2 turns once came out negative.
    plan = InstructionsPlan(servers=(SERVERS["bare-trio"],), users=4, turns=25)
    results = run_instructions(
        plan, tmp_path, progress=Progress(io.StringIO(), tty=False), argv=["python"]
    )
    (row,) = results["rows"]
    assert results["ok"], row
    assert row["turns"] == 100
    # Bare Trio's turn is about 470k instructions (a frame read, five written).
    assert 100_000 < row["per_turn"] < 2_000_000
    assert json.loads((tmp_path / "results.json").read_text())["kind"] == "instructions"
    assert "| bare Trio |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["instructions", "--users", "0"], "--users and --turns"),
        (["instructions", "--servers", "nope"], "unknown server"),
    ],
)
def test_the_cli_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
