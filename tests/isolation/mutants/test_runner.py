"""Mutants: each deliberate leak is found by the checks it should be found by.

For every mutant of the catalogue: it still applies to ``app/`` (every anchor exactly
once), the static checker reports exactly the expected codes on the mutated copy, and
the runtime audit -- against the mutated copy started as a real server subprocess --
reports the mutant's leak (or, for a mutant expected to pass unseen, nothing). The
unmodified app is clean in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs
import pytest

from isolation.mutants._catalogue import CATALOGUE, CONTROL
from isolation.mutants._model import Mutant, MutantError, Replacement
from isolation.mutants._runner import (
    MutantOptions,
    MutantResult,
    StaticOutcome,
    apply_replacements,
    audit_copy,
    build_copy,
    check_static,
)

#: Small audits: 24 users x 3 runs against a 50 ms agent; one 1 s attempt, then in full.
OPTIONS: Final = MutantOptions(users=24, runs=3, agent_delay_ms=50.0, budgets_s=(1.0,))
ALL: Final = (CONTROL, *CATALOGUE)


def ids(mutant: Mutant) -> str:
    return mutant.name


@pytest.fixture(scope="module")
def control_static(tmp_path_factory: pytest.TempPathFactory) -> StaticOutcome:
    copy = build_copy(CONTROL, tmp_path_factory.mktemp("control"))
    return check_static(copy)


# -- applying and the static check ------------------------------------------------------------


def test_the_control_is_statically_clean(control_static: StaticOutcome) -> None:
    assert control_static.findings == (), control_static.lines()


@pytest.mark.parametrize("mutant", CATALOGUE, ids=ids)
def test_the_mutant_applies_and_the_static_check_reports_exactly_the_expected_codes(
    mutant: Mutant, tmp_path: Path, control_static: StaticOutcome
) -> None:
    copy = build_copy(mutant, tmp_path)
    for replacement in mutant.replacements:
        assert replacement.new in (copy / replacement.file).read_text(encoding="utf-8")
    outcome = check_static(copy, control_static.baseline())
    assert outcome.codes == mutant.expected_static, outcome.lines()
    assert all(f.path.startswith("app/") for f in outcome.findings)
    assert {f.path.removeprefix("app/") for f in outcome.findings} <= set(mutant.files)


def test_an_anchor_that_no_longer_matches_fails_loudly() -> None:
    files = {"_agent.py": "a = 1\nb = 2\nb = 2\n"}
    missing = Replacement("_agent.py", "c = 3\n", "c = 4\n")
    with pytest.raises(MutantError, match=r"mutant m no longer applies to app/_agent.py"):
        apply_replacements("m", dict(files), [missing])
    twice = Replacement("_agent.py", "b = 2\n", "b = 3\n")
    with pytest.raises(MutantError, match=r"anchor found 2 times: 'b = 2'"):
        apply_replacements("m", dict(files), [twice])
    gone = Replacement("_gone.py", "x", "y")
    with pytest.raises(MutantError, match=r"app/_gone.py \(file missing"):
        apply_replacements("m", dict(files), [gone])
    changed = dict(files)
    apply_replacements("m", changed, [Replacement("_agent.py", "a = 1\n", "a = 2\n")])
    assert changed == {"_agent.py": "a = 2\nb = 2\nb = 2\n"}


def test_build_copy_fails_loudly_on_a_stale_mutant(tmp_path: Path) -> None:
    stale = attrs.evolve(
        CATALOGUE[0], replacements=(Replacement("_agent.py", "no such text\n", "x\n"),)
    )
    with pytest.raises(MutantError, match=rf"mutant {stale.name} no longer applies"):
        build_copy(stale, tmp_path)


# -- the runtime audit ---------------------------------------------------------------------


async def test_a_server_that_does_not_start_fails_loudly(tmp_path: Path) -> None:
    broken = Mutant(
        name="broken",
        story="the server dies at startup",
        replacements=(
            Replacement("__main__.py", "sys.exit(main())", "sys.exit('broken on purpose')"),
        ),
        expected_static=frozenset(),
        expected_runtime=False,
    )
    build_copy(broken, tmp_path)
    with pytest.raises(MutantError, match=r"exited with status 1 before listening(.|\n)*broken"):
        await audit_copy(tmp_path, OPTIONS, broken)


async def test_a_server_that_completes_no_run_is_an_error_not_clean(tmp_path: Path) -> None:
    crashing = Mutant(
        name="crashing",
        story="every run crashes its connection: nothing leaks, and nothing is proved",
        replacements=(
            Replacement(
                "session/_session.py",
                "        agent = self._services.agent\n",
                "        raise RuntimeError('broken on purpose')\n",
            ),
        ),
        expected_static=frozenset(),
        expected_runtime=False,
    )
    build_copy(crashing, tmp_path)
    small = attrs.evolve(OPTIONS, users=4, runs=1, drop_rate=0.0, idor_rate=0.0)
    outcome = await audit_copy(tmp_path, small, crashing)
    assert not outcome.clean
    assert outcome.error is not None
    assert "saw no run complete" in outcome.error


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mutant", ALL, ids=ids)
async def test_the_runtime_audit_catches_the_mutant_as_expected(
    mutant: Mutant, tmp_path: Path
) -> None:
    build_copy(mutant, tmp_path)
    outcome = await audit_copy(tmp_path, OPTIONS, mutant)
    result = MutantResult(
        mutant=mutant, static=StaticOutcome(frozenset(), (), 0.0), runtime=outcome
    )
    shown = f"{outcome.kinds} {outcome.error} {outcome.attempts} {outcome.evidence}"
    assert outcome.error is None, shown
    assert result.runtime_as_expected, shown
    if mutant.expected_runtime:
        assert outcome.caught, shown
        assert outcome.evidence, shown
        assert outcome.detect_s is not None, shown
        assert mutant.signature & outcome.kind_names, shown
    else:
        assert not outcome.caught, shown
        assert outcome.attempts[-1].complete, shown
        assert outcome.attempts[-1].violation_count == 0, shown
