"""Fixtures of the chaos tests: ``e2e`` (an in-process server on the lean transport).

The end-to-end machinery lives in ``tests/app/conftest.py``; as in
``tests/security/conftest.py``, that module is loaded by path under the name pytest
gives it (``tests.app.conftest``), so both conftests share one module object.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_app_conftest() -> None:
    name = "tests.app.conftest"
    if name in sys.modules:
        return
    path = Path(__file__).resolve().parents[1] / "app" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load_app_conftest()

import pytest  # noqa: E402 - after the loader above, like the import that needs it

from tests.app.conftest import E2E  # noqa: E402 - resolvable only once the loader ran


@pytest.fixture
def e2e() -> E2E:
    """Servers on the default (lean) transport: the one the chaos runs against."""
    return E2E(transport="lean")
