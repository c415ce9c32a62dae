"""Guard: the isolation tests must collect, not merely exist on paper.

A test file can look complete and still collect nothing (an import error hidden by
a skip, a renamed function, a wrong ``python_files`` pattern); this runs the real
collection in a fresh interpreter with the project's own configuration.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ISOLATION_E2E = "tests/app/test_isolation_e2e.py"


def collected_count(output: str) -> int | None:
    """The N of pytest's "N tests collected" (or "N/M tests collected") line, if any."""
    match = re.search(r"^(\d+)(?:/\d+)? tests? collected", output, re.MULTILINE)
    return int(match.group(1)) if match else None


def defined_tests(path: Path) -> list[str]:
    """Names of the module-level ``test_*`` functions (sync or async) in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    ]


def test_collected_count_parses_pytest_summaries() -> None:
    assert collected_count("a.py::t\n\n6 tests collected in 0.12s\n") == 6
    assert collected_count("1 test collected in 0.01s") == 1
    assert collected_count("2/6 tests collected (4 deselected) in 0.1s") == 2
    assert collected_count("no tests collected in 0.01s") is None
    assert collected_count("ERROR collecting tests/app/x.py") is None


@pytest.mark.timeout(150)
def test_isolation_e2e_collects_tests() -> None:
    # The outer run's PYTEST_ADDOPTS (say ``-k something``) must not deselect here.
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, ISOLATION_E2E],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    count = collected_count(result.stdout)
    assert count is not None, output
    assert count > 0, output
    # Every test function written in the file was collected (parametrizing only adds).
    names = defined_tests(ROOT / ISOLATION_E2E)
    assert count >= len(names) > 0, output
    for name in names:
        assert f"::{name}" in result.stdout, f"{name} was not collected:\n{output}"
