"""Real components the tests start themselves (redis-server, nginx, chromium).

A test that needs one and finds it missing is skipped with a message saying how to
install it, except under ``CI=true``, where missing means failing: CI must install
it (``.ci/run`` does, with apt-get).
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

__all__ = ["find_component", "missing_component"]


def find_component(binary: str, package: str, env_var: str | None = None) -> str:
    """The path of ``binary`` (or of ``$env_var`` when set); skips or fails the test if absent.

    ``package`` is the Debian package that provides it, named in the message.
    """
    configured = os.environ.get(env_var) if env_var else None
    path = configured if configured else shutil.which(binary)
    if path is None or not os.access(path, os.X_OK):
        missing_component(f"install {binary}: apt-get install -y {package} (not found on PATH)")
    return path


def missing_component(message: str) -> NoReturn:
    """Skip the current test with ``message``; fail it under ``CI=true``."""
    import pytest  # only tests call this; the server never imports it

    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
