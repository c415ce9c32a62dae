"""``python -m tests.browser.screenshot``: the README's picture is made by tested tooling."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser

from tests.browser._harness import running_server
from tests.browser.screenshot import DEFAULT_PATH, take_screenshot


def test_the_screenshot_tooling_saves_a_png(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    with running_server("lean") as server:
        take_screenshot(browser, server, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_readme_shows_the_committed_screenshot() -> None:
    assert DEFAULT_PATH.is_file()
    readme = (DEFAULT_PATH.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "docs/chat-page.png" in readme
