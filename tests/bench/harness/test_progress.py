"""The progress display: an updating line on a terminal, throttled lines otherwise."""

from __future__ import annotations

import io

from bench.harness._progress import Progress


def test_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.stage("[1/2] fastapi:")
    progress.update("10 turns")
    progress.update("2")
    progress.log("done")
    text = out.getvalue()
    assert "\r[1/2] fastapi: 10 turns" in text
    assert "\r[1/2] fastapi: 2" in text
    assert text.endswith("done\n")
    assert text.count("\n") == 1


def test_plain_output_prints_lines_at_most_every_interval() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False, plain_every_s=3600)
    progress.stage("[1/2] fastapi:")  # a new stage prints once
    progress.update("10 turns")  # throttled
    progress.log("result line")
    progress.stage("[2/2] aiohttp:")
    lines = out.getvalue().splitlines()
    assert lines == ["[1/2] fastapi:", "result line", "[2/2] aiohttp:"]
    assert "\r" not in out.getvalue()
