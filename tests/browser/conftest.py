"""Fixtures of the browser tests: Chromium (Debian's), a page per test, real servers.

- ``browser``: one headless Chromium for the session. Missing Chromium skips the tests,
  except under ``CI=true``, where it fails them: CI must install it (``.ci/run``).
- ``page``: a fresh browser context and page per test, 5 s per action; a failing test
  leaves a screenshot in ``tests/browser/artifacts/`` (git-ignored), and a JavaScript
  exception on the page fails the test.
- ``dev_server`` (both transports) and ``prod_server``: ``python -m app serve`` in a
  subprocess, one per module and transport.

Type-check-only imports name this file ``tests.browser.conftest``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser._harness import Server, chromium_path, launch_chromium, running_server

ARTIFACTS: Final = Path(__file__).resolve().parent / "artifacts"
#: Each step of the echo agent sleeps this long, so a run lasts about 4 of them:
#: long enough to cancel it or reload in the middle.
AGENT_DELAY_MS: Final = 300
#: The production server closes a connection after this long without a message.
PROD_IDLE_TIMEOUT_S: Final = 1.5
ACTION_TIMEOUT_MS: Final = 5_000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not chromium_path().exists():
        message = f"install Chromium: apt-get install chromium (no {chromium_path()})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
        reports = request.node.stash.get(_REPORTS, {})
        if "call" in reports and reports["call"].failed:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
            page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


@pytest.fixture(scope="module", params=["lean", "asgi"])
def dev_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """``enclave serve --dev`` with a slow echo agent (:data:`AGENT_DELAY_MS` per step)."""
    with running_server(request.param, "--agent-delay-ms", str(AGENT_DELAY_MS)) as server:
        yield server


@pytest.fixture(scope="module", params=["lean", "asgi"])
def prod_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """``enclave serve`` without ``--dev``; idle connections close quickly."""
    idle = str(PROD_IDLE_TIMEOUT_S)
    with running_server(request.param, "--idle-timeout-s", idle, dev=False) as server:
        yield server
