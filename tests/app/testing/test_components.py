"""find_component: a path when present; skip, or fail under CI=true, when missing."""

from __future__ import annotations

import pytest

from app.testing import find_component


def test_found_on_path() -> None:
    assert find_component("sh", "dash").endswith("/sh")


def test_env_var_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_TEST_SH", "/bin/sh")
    assert find_component("no-such-binary-x", "x", env_var="ENCLAVE_TEST_SH") == "/bin/sh"


def test_missing_skips_with_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y no-such-pkg"):
        find_component("no-such-binary-x", "no-such-pkg")


def test_missing_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y no-such-pkg"):
        find_component("no-such-binary-x", "no-such-pkg")
