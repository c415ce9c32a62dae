"""The mutant catalogue is well formed: unique names, known codes and kinds, both checks used."""

from __future__ import annotations

import pytest

from isolation import CODES
from isolation.audit._ledger import VIOLATION_KINDS
from isolation.mutants._catalogue import CATALOGUE, CONTROL, by_name


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
