"""Finding codes and the :class:`Finding` value of the static isolation checker."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = ["CODES", "Finding", "RawFinding"]

#: Every code the checker can report, with a one-line description.
CODES: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "ISO000": "file cannot be checked (syntax error, bad encoding, unreadable)",
        "ISO001": "invalid pragma: unknown code, missing '-- reason', or malformed",
        "ISO101": "module-level mutable value (shared by every connection of the process)",
        "ISO102": "`global` statement (rebinds process-wide state from inside a function)",
        "ISO103": "mutable class attribute or field default shared by every instance",
        "ISO104": "lru_cache/cache on a function with parameters (memoises across users)",
        "ISO105": "cached_property on a non-frozen class (memoises on a possibly shared object)",
        "ISO106": "mutable value put in a ContextVar (shared by every copied context)",
        "ISO107": "request-scoped class constructed at import time",
        "ISO108": "trio.lowlevel.spawn_system_task (task outlives the connection's nursery)",
        "ISO109": "nursery stored at module level or on a class (tasks escape the connection)",
    }
)


@attrs.frozen(order=True)
class Finding:
    """One problem: ``path:line:col CODE message`` (line and column are 1-based)."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def format(self) -> str:
        """The one-line text form used by the CLI."""
        return f"{self.path}:{self.line}:{self.col} {self.code} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by ``--format json``."""
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
        }


@attrs.frozen
class RawFinding:
    """A finding inside one file, before pragmas and path are applied.

    ``col`` is the 0-based UTF-8 byte offset from :mod:`ast`; ``stmt_line`` is the
    first line of the statement holding the finding (where a pragma may also sit).
    """

    line: int
    col: int
    code: str
    message: str
    stmt_line: int
