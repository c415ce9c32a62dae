"""The runner's reading of Autobahn's ``index.json`` and its summary table (no Python 2.7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance._report import (
    CaseResult,
    case_key,
    load_index,
    parse_index,
    render_markdown,
    summarize,
)

FIXTURE = Path(__file__).parent / "fixtures" / "index.json"


def test_case_ids_sort_numerically() -> None:
    ids = ["9.10.1", "10.1.1", "9.2.1", "1.1.1", "2.10", "2.9"]
    assert sorted(ids, key=case_key) == ["1.1.1", "2.9", "2.10", "9.2.1", "9.10.1", "10.1.1"]


def test_the_fixture_parses_per_agent_in_case_order() -> None:
    index = load_index(FIXTURE)
    assert sorted(index) == ["asgi", "lean"]
    lean = [r.case for r in index["lean"]]
    assert lean == ["2.1", "3.2", "5.1", "7.1.6", "7.13.1", "9.2.1", "9.10.1", "10.1.1"]
    assert index["asgi"][1] == CaseResult("3.4", "FAILED", "FAILED", None)
    assert index["lean"][1].close_code == 1002


@pytest.mark.parametrize(
    ("behavior", "close", "column"),
    [
        ("OK", "OK", "OK"),
        ("OK", "FAILED BY CLIENT", "OK"),  # amber in Autobahn's report: a note, not a failure
        ("OK", "WRONG CODE", "OK"),
        ("NON-STRICT", "OK", "NON-STRICT"),
        ("INFORMATIONAL", "INFORMATIONAL", "INFORMATIONAL"),
        ("UNIMPLEMENTED", "OK", "UNIMPLEMENTED"),
        ("FAILED", "OK", "FAILED"),
        ("NO CLOSE", "OK", "FAILED"),  # anything unknown fails
        ("OK", "UNCLEAN", "FAILED"),
        ("NON-STRICT", "FAILED", "FAILED"),
    ],
)
def test_each_case_counts_in_one_column(behavior: str, close: str, column: str) -> None:
    assert CaseResult("1.1.1", behavior, close).column == column


def test_summary_counts_and_the_markdown_table() -> None:
    index = load_index(FIXTURE)
    lean = summarize("lean", index["lean"], expected=8, seconds=61.4)
    asgi = summarize("asgi", index["asgi"], expected=4, crashes=["3.4"], permessage_deflate=True)
    assert [lean.count(c) for c in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")] == [
        3,
        1,
        1,
        1,
    ]
    assert lean.failed == 2
    assert not lean.passed
    assert asgi.missing == 2
    assert asgi.failed == 3
    assert not asgi.passed
    table = render_markdown([lean, asgi])
    lines = table.splitlines()
    assert lines[0].startswith("| transport | cases | OK | NON-STRICT | INFORMATIONAL |")
    assert lines[2] == "| lean | 8 | 3 | 1 | 1 | 1 | 2 | 0 | 0 | 61 s |"
    assert lines[3] == "| asgi | 2 | 1 | 0 | 0 | 0 | 1 | 2 | 1 |  |"
    assert "- FAILED: 5.1 (behaviour OK, close UNCLEAN, code None)" in lines
    assert "- FAILED: 9.10.1 (behaviour NO CLOSE, close OK, code 1000)" in lines
    assert "- close behaviour FAILED BY CLIENT in 2.1 (code 1000)" in lines
    assert "**asgi** (permessage-deflate negotiated):" in lines
    assert "- the server process died during (or right after) case 3.4" in lines
    assert "- 2 selected case(s) did not run" in lines


def test_a_clean_run_passes() -> None:
    results = [CaseResult("1.1.1", "OK", "OK", 1000), CaseResult("3.2", "NON-STRICT", "OK", 1002)]
    summary = summarize("lean", results, expected=2)
    assert summary.passed
    assert "- NON-STRICT: 3.2" in render_markdown([summary])
    only_ok = summarize("lean", results[:1], expected=1)
    assert render_markdown([only_ok]).endswith("**lean**:\n- every case OK\n")


def test_later_rounds_replace_nothing_and_merge() -> None:
    first = [CaseResult("1.1.1", "OK", "OK"), CaseResult("3.4", "FAILED", "FAILED")]
    second = [CaseResult("3.5", "OK", "OK")]
    merged = summarize("asgi", [*first, *second], expected=3, crashes=["3.4"])
    assert [r.case for r in merged.results] == ["1.1.1", "3.4", "3.5"]
    assert merged.missing == 0
    assert merged.failed == 1


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"lean": []},
        {"lean": {"x.y": {"behavior": "OK", "behaviorClose": "OK"}}},
        {"lean": {"1.1": {"behavior": "OK"}}},
        {"lean": {"1.1": {"behavior": 1, "behaviorClose": "OK"}}},
        {"lean": {"1.1": "OK"}},
    ],
)
def test_a_malformed_index_is_refused(data: object) -> None:
    with pytest.raises(ValueError, match=r"index\.json"):
        parse_index(data)
