"""Finding codes and the Finding value."""

from __future__ import annotations

import attrs
import pytest

from isolation import CODES, Finding


def test_codes_are_an_immutable_mapping_of_stable_codes() -> None:
    assert set(CODES) == {"ISO000", "ISO001", *(f"ISO10{n}" for n in range(1, 10))}
    with pytest.raises(TypeError):
        CODES["ISO999"] = "nope"  # type: ignore[index]
    assert all(text and "\n" not in text for text in CODES.values())


def test_finding_is_frozen_and_formats_as_one_line() -> None:
    finding = Finding("a.py", 3, 1, "ISO102", "global x")
    assert finding.format() == "a.py:3:1 ISO102 global x"
    assert finding.as_dict() == {
        "path": "a.py",
        "line": 3,
        "col": 1,
        "code": "ISO102",
        "message": "global x",
    }
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        finding.line = 4  # type: ignore[misc]
