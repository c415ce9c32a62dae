"""Autobahn's ``index.json``, read and summed up as the Markdown table the docs publish.

``wstest -m fuzzingclient`` writes ``index.json``: per agent, per case id, the case's
``behavior`` (did the echoes match) and ``behaviorClose`` (was the closing handshake
right). A case counts in exactly one column:

- FAILED when its behaviour is FAILED or any value outside the four below (Autobahn's
  ``NO CLOSE``), or when its closing was ``FAILED`` or ``UNCLEAN`` — Autobahn's own HTML
  marks both red;
- else OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED, as Autobahn says.

``WRONG CODE`` and ``FAILED BY CLIENT`` closings of otherwise good cases are listed as
notes but do not fail (Autobahn shows them amber). No I/O except :func:`load_index`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = [
    "COLUMNS",
    "CaseResult",
    "Summary",
    "case_key",
    "load_index",
    "parse_index",
    "render_markdown",
    "summarize",
]

COLUMNS: Final = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
#: Closing behaviours that fail a case whatever its behaviour.
FAILED_CLOSES: Final = frozenset({"FAILED", "UNCLEAN"})


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key of a case id: ``"9.10.2"`` after ``"9.2.1"``."""
    return tuple(int(part) for part in case_id.split("."))


@attrs.frozen
class CaseResult:
    """One case of one agent, as ``index.json`` records it."""

    case: str
    behavior: str
    behavior_close: str
    close_code: int | None = None

    @property
    def column(self) -> str:
        """The summary column this case counts in."""
        if self.behavior_close in FAILED_CLOSES:
            return "FAILED"
        return self.behavior if self.behavior in COLUMNS else "FAILED"


def parse_index(data: Any) -> dict[str, list[CaseResult]]:
    """Per agent, its case results sorted by case id. Raises ValueError on a malformed index."""
    if not isinstance(data, Mapping):
        raise ValueError("index.json: expected an object of agents")
    out: dict[str, list[CaseResult]] = {}
    for agent, cases in data.items():
        if not isinstance(cases, Mapping):
            raise ValueError(f"index.json: agent {agent!r}: expected an object of cases")
        results = []
        for case, entry in cases.items():
            try:
                case_key(case)
                behavior, close = entry["behavior"], entry["behaviorClose"]
                code = entry.get("remoteCloseCode")
            except (KeyError, TypeError, ValueError, AttributeError):
                raise ValueError(f"index.json: agent {agent!r}: bad case {case!r}") from None
            if not isinstance(behavior, str) or not isinstance(close, str):
                raise ValueError(f"index.json: agent {agent!r}: bad case {case!r}")
            results.append(
                CaseResult(case, behavior, close, code if isinstance(code, int) else None)
            )
        out[str(agent)] = sorted(results, key=lambda r: case_key(r.case))
    return out


def load_index(path: Path) -> dict[str, list[CaseResult]]:
    """:func:`parse_index` of the file at ``path``."""
    return parse_index(json.loads(path.read_text(encoding="utf-8")))


@attrs.frozen
class Summary:
    """One transport's run: its results and what happened around them."""

    transport: str
    results: tuple[CaseResult, ...]
    expected: int | None = None  # cases the spec selected, when known
    crashes: tuple[str, ...] = ()  # the case during (or right after) which the server died
    seconds: float | None = None
    permessage_deflate: bool = False

    def count(self, column: str) -> int:
        return sum(1 for r in self.results if r.column == column)

    @property
    def missing(self) -> int:
        """Selected cases with no result (wstest stopped early)."""
        return 0 if self.expected is None else max(0, self.expected - len(self.results))

    @property
    def failed(self) -> int:
        return self.count("FAILED") + self.missing

    @property
    def passed(self) -> bool:
        return self.failed == 0 and not self.crashes


def summarize(
    transport: str,
    results: Iterable[CaseResult],
    *,
    expected: int | None = None,
    crashes: Iterable[str] = (),
    seconds: float | None = None,
    permessage_deflate: bool = False,
) -> Summary:
    """A :class:`Summary`; ``results`` may come from several wstest rounds (one per crash)."""
    by_case = {r.case: r for r in results}
    ordered = tuple(sorted(by_case.values(), key=lambda r: case_key(r.case)))
    return Summary(
        transport, ordered, expected, tuple(crashes), seconds, permessage_deflate=permessage_deflate
    )


def _ids(results: Iterable[CaseResult]) -> str:
    return ", ".join(r.case for r in results)


def render_markdown(summaries: Iterable[Summary]) -> str:
    """The summary table (one row per transport) and, per transport, every case not OK."""
    summaries = list(summaries)
    lines = [
        "| transport | cases | " + " | ".join(COLUMNS) + " | not run | server crashes | time |",
        "|---|" + "---:|" * (len(COLUMNS) + 4),
    ]
    for s in summaries:
        counts = " | ".join(str(s.count(c)) for c in COLUMNS)
        time = "" if s.seconds is None else f"{s.seconds:.0f} s"
        lines.append(
            f"| {s.transport} | {len(s.results)} | {counts} | {s.missing} "
            f"| {len(s.crashes)} | {time} |"
        )
    for s in summaries:
        deflate = " (permessage-deflate negotiated)" if s.permessage_deflate else ""
        lines += ["", f"**{s.transport}**{deflate}:"]
        notes = []
        for column in COLUMNS[1:-1]:
            cases = [r for r in s.results if r.column == column]
            if cases:
                notes.append(f"- {column}: {_ids(cases)}")
        for r in s.results:
            if r.column == "FAILED":
                notes.append(
                    f"- FAILED: {r.case} (behaviour {r.behavior}, close {r.behavior_close}, "
                    f"code {r.close_code})"
                )
        odd_closes = [
            r
            for r in s.results
            if r.column != "FAILED" and r.behavior_close not in ("OK", "INFORMATIONAL")
        ]
        for r in odd_closes:
            notes.append(f"- close behaviour {r.behavior_close} in {r.case} (code {r.close_code})")
        if s.missing:
            notes.append(f"- {s.missing} selected case(s) did not run")
        for case in s.crashes:
            notes.append(f"- the server process died during (or right after) case {case}")
        lines += notes or ["- every case OK"]
    return "\n".join(lines) + "\n"
