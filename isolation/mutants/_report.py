"""The mutant table: terminal text, Markdown, JSON, and the generated block of a doc."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from ._model import Mutant
from ._runner import MutantOptions, MutantResult, RuntimeOutcome

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "HEADER",
    "as_json",
    "expected_columns",
    "format_markdown",
    "format_text",
    "generated_block",
    "replace_block",
    "table_rows",
]

BEGIN_MARKER: Final = "<!-- mutants:begin -->"
END_MARKER: Final = "<!-- mutants:end -->"
HEADER: Final = (
    "mutant",
    "app files changed",
    "static: expected",
    "static: measured",
    "runtime: expected",
    "runtime: measured",
    "static time",
    "runtime time to detect",
    "verdict",
)
_NONE: Final = "none"


def _codes(codes: frozenset[str]) -> str:
    return ", ".join(sorted(codes)) or _NONE


def _is_control(mutant: Mutant) -> bool:
    return not mutant.replacements


def expected_columns(mutant: Mutant) -> tuple[str, str]:
    """The "static: expected" and "runtime: expected" cells of ``mutant``'s row."""
    if _is_control(mutant):
        return _NONE, "clean"
    return _codes(mutant.expected_static), "caught" if mutant.expected_runtime else "not caught"


def _runtime_measured(runtime: RuntimeOutcome, control: bool) -> str:
    if runtime.error is not None:
        return f"error: {runtime.error}"
    if runtime.caught:
        kinds = ", ".join(f"{kind} {count}" for kind, count in runtime.kinds)
        return f"caught: {kinds}"
    if control:
        return "clean" if runtime.clean else "not clean"
    return "not caught"


def _runtime_time(runtime: RuntimeOutcome) -> str:
    if runtime.caught and runtime.detect_s is not None:
        last = runtime.attempts[-1]
        how = "full audit" if last.complete else f"stopped at {last.budget_s:g} s"
        return f"≤ {runtime.detect_s:.2f} s ({how})"
    full = next((a for a in reversed(runtime.attempts) if a.complete), None)
    return f"n/a (full audit {full.wall_time_s:.2f} s)" if full is not None else "n/a"


def table_rows(results: Sequence[MutantResult]) -> list[tuple[str, ...]]:
    """One row of cells per result, in the order of :data:`HEADER`."""
    rows: list[tuple[str, ...]] = []
    for result in results:
        mutant = result.mutant
        control = _is_control(mutant)
        static_expected, runtime_expected = expected_columns(mutant)
        rows.append(
            (
                mutant.name,
                ", ".join(mutant.files) or _NONE,
                static_expected,
                _codes(result.static.codes),
                runtime_expected,
                _runtime_measured(result.runtime, control),
                f"{result.static.seconds:.2f} s",
                _runtime_time(result.runtime),
                "as expected" if result.as_expected else "UNEXPECTED",
            )
        )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    """``text`` as inline code (backticks inside become quotes)."""
    return "`" + text.replace("`", "'") + "`"


def format_markdown(results: Sequence[MutantResult], options: MutantOptions) -> str:
    """The Markdown table, then each mutant's story and evidence."""
    lines = [
        f"Measured by `python -m isolation mutants`: {options.describe()}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for row in table_rows(results):
        name, *rest = row
        lines.append("| " + " | ".join([f"`{name}`", *(_cell(c) for c in rest)]) + " |")
    lines += ["", "What each mutant changes, and one line of the audit's evidence:", ""]
    for result in results:
        mutant = result.mutant
        lines.append(f"- **`{mutant.name}`**: {mutant.story}.")
        if result.runtime.evidence:
            lines.append(f"  Runtime: {_code(result.runtime.evidence)}")
        lines.extend(f"  Static: {_code(finding)}" for finding in result.static.lines())
    return "\n".join(lines) + "\n"


def format_text(results: Sequence[MutantResult], options: MutantOptions) -> str:
    """The table for a terminal, then the evidence lines."""
    rows = [HEADER, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    out = [f"isolation mutants: {options.describe()}"]
    for index, row in enumerate(rows):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    for result in results:
        if result.runtime.evidence:
            out.append(f"{result.mutant.name}: {result.runtime.evidence}")
    failed = [r.mutant.name for r in results if not r.as_expected]
    out.append(
        f"UNEXPECTED: {', '.join(failed)}"
        if failed
        else f"all {len(results) - 1} mutants caught as expected; the control is clean"
    )
    return "\n".join(out)


def as_json(results: Sequence[MutantResult], options: MutantOptions) -> str:
    data: dict[str, Any] = {
        "options": attrs.asdict(options),
        "as_expected": all(r.as_expected for r in results),
        "results": [r.as_dict() for r in results],
    }
    return json.dumps(data, indent=2, ensure_ascii=False)


def generated_block(text: str) -> str:
    """The text between the markers of a document. Raises ValueError without them."""
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ValueError(f"no {BEGIN_MARKER} ... {END_MARKER} block")
    return text[begin + len(BEGIN_MARKER) : end]


def replace_block(path: Path, markdown: str) -> None:
    """Rewrite the block between the markers of ``path``. Raises ValueError, OSError."""
    text = path.read_text(encoding="utf-8")
    old = generated_block(text)
    begin = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    updated = text[:begin] + "\n" + markdown + text[begin + len(old) :]
    path.write_text(updated, encoding="utf-8")
