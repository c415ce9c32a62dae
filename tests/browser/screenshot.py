"""``python -m tests.browser.screenshot [PATH]``: the README's picture of the chat page.

Starts ``enclave serve --dev`` (lean transport) on an ephemeral port, opens the page in
Debian's Chromium, gets a dev token, connects, runs two messages and saves a screenshot
(default ``docs/chat-page.png``). The browser tests run :func:`take_screenshot` too,
so the tooling that made the picture is tested.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Browser, expect, sync_playwright

from tests.browser._harness import ROOT, Server, chromium_path, launch_chromium, running_server

__all__ = ["DEFAULT_PATH", "main", "take_screenshot"]

DEFAULT_PATH = ROOT / "docs" / "chat-page.png"
MESSAGES = ("hello big world", "how many words are in this sentence?")


def take_screenshot(browser: Browser, server: Server, path: Path) -> None:
    """Drive the page through a short chat on ``server`` and save it as a PNG at ``path``."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto(server.url)
        page.click("#dev-token")
        expect(page.locator("#token")).not_to_have_value("")
        page.click("#connect")
        expect(page.locator("#status")).to_contain_text("Connected as dev-user")
        for count, text in enumerate(MESSAGES, start=1):
            page.fill("#message", text)
            page.press("#message", "Enter")
            expect(page.locator('#log [data-type="agent_completed"]')).to_have_count(count)
        page.locator("#message").blur()
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=path)
    finally:
        context.close()


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_PATH
    if not chromium_path().exists():
        print(f"no Chromium at {chromium_path()}: apt-get install chromium", file=sys.stderr)
        return 2
    with running_server("lean") as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            take_screenshot(browser, server, path)
        finally:
            browser.close()
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
