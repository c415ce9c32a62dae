"""What a mutant is: a named, plausible source change to ``app/`` and the detection it expects."""

from __future__ import annotations

import attrs

__all__ = ["Mutant", "MutantError", "Replacement"]


class MutantError(Exception):
    """A mutant cannot be built or run (an anchor no longer matches, the server did not start)."""


@attrs.frozen
class Replacement:
    """Replace ``old`` by ``new`` in ``app/<file>``; ``old`` must occur exactly once."""

    file: str
    old: str
    new: str


@attrs.frozen(kw_only=True)
class Mutant:
    """One deliberate leak, and what each check is expected to say about it.

    ``signature``: the runtime violation kinds that name *this* leak; the runtime
    check counts as catching the mutant only when one of them is reported.
    """

    name: str
    story: str  # one line: what the developer did, and the incident class it mirrors
    replacements: tuple[Replacement, ...]
    expected_static: frozenset[str]
    expected_runtime: bool
    signature: frozenset[str] = frozenset()

    @property
    def files(self) -> tuple[str, ...]:
        """The files of ``app/`` it changes, in order of first change."""
        return tuple(dict.fromkeys(r.file for r in self.replacements))
