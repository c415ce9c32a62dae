"""``python -m bench resume`` end to end, tiny: 20 users on both thread stores."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench._cli import main
from bench.harness._progress import Progress
from bench.threads._runner import ResumePlan, render_markdown, run_resume


def test_resume_on_both_stores(tmp_path: Path) -> None:
    plan = ResumePlan(users=20, turns=2, replay=4, server_core=None)
    results = run_resume(
        plan,
        tmp_path,
        progress=Progress(io.StringIO(), tty=False),
        argv=["python", "-m", "bench", "resume", "--users", "20"],
    )
    assert results["ok"], results["rows"]
    rows = {row["store"]: row for row in results["rows"]}
    assert set(rows) == {"memory", "sqlite"}
    for row in rows.values():
        result = row["result"]
        assert (result["connected"], result["reconnected"], result["resumed"]) == (20, 20, 20)
        assert result["replayed"] == 20 * 4  # each resume replays exactly what it asked for
        assert row["latency"]["p50"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "resume"
    markdown = (tmp_path / "results.md").read_text()
    assert "| memory | 20/20 |" in markdown
    assert "| sqlite | 20/20 |" in markdown
    assert not list(tmp_path.rglob("threads.db*")), "the SQLite file outlived its server"


def test_render_markdown_shows_an_unavailable_store() -> None:
    text = render_markdown(ResumePlan(users=5), [{"store": "sqlite", "unavailable": "boom"}])
    assert "| sqlite | unavailable: boom |" in text


def test_cli_rejects_an_unknown_store(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", "--stores", "memory,redis"])
    assert exit_info.value.code == 2
    assert "--stores" in capsys.readouterr().err
