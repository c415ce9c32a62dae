"""Shared fixtures of the mutant tests: results of mutants that were never run.

Under ``--import-mode=importlib`` test modules cannot import this file at run time, so
they take the ``fake_result`` fixture and import :class:`FakeResult` for type checking
only (``if TYPE_CHECKING: from tests.isolation.mutants.conftest import FakeResult``).
"""

from __future__ import annotations

from typing import Protocol

import pytest

from isolation.mutants._model import Mutant
from isolation.mutants._runner import Attempt, MutantResult, RuntimeOutcome, StaticOutcome
from isolation.static import Finding


class FakeResult(Protocol):
    def __call__(self, mutant: Mutant, *, caught: bool) -> MutantResult: ...


def _fake_result(mutant: Mutant, *, caught: bool) -> MutantResult:
    """A result for ``mutant`` as if it had run: caught at runtime or not, static as expected."""
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


@pytest.fixture
def fake_result() -> FakeResult:
    return _fake_result
