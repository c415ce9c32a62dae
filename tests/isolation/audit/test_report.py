"""The audit report: reply shapes of IDOR probes, JSON and text forms."""

from __future__ import annotations

import json

from isolation.audit._report import AuditReport, reply_shape


def test_reply_shapes_ignore_only_the_echoed_id() -> None:
    base = {"type": "error", "code": "run_not_found", "message": "no such run"}
    assert reply_shape({**base, "ref": "r1"}, "r1") == reply_shape({**base, "ref": "r2"}, "r2")
    assert reply_shape({**base, "message": "r1 gone"}, "r1") == reply_shape(
        {**base, "message": "r2 gone"}, "r2"
    )
    leaky = {**base, "message": "not your run", "ref": "r1"}
    assert reply_shape(leaky, "r1") != reply_shape({**base, "ref": "r2"}, "r2")
    assert reply_shape(None, "r1") != reply_shape({**base, "ref": "r2"}, "r2")


def test_c_the_report_is_json_serialisable_with_everything() -> None:
    report = AuditReport(
        url="ws://x",
        seed=1,
        users=0,
        runs_per_user=1,
        connections=0,
        connect_failures=0,
        connect_retries=0,
        runs_planned=0,
        runs_sent=0,
        runs_started=0,
        runs_completed=0,
        runs_cancelled=0,
        runs_errored=0,
        runs_rejected=0,
        runs_interrupted=0,
        runs_lost=0,
        cancels_sent=0,
        frames_checked=0,
        idor_probes=0,
        idor_probes_live=0,
        thread_probes=0,
        drops=0,
        drops_planned=0,
        wall_time_s=0.0,
        complete=False,
        violation_count=0,
        violations=(),
        anomaly_count=0,
        anomalies=(),
    )
    assert report.exit_code == 2
    assert json.loads(report.to_json())["exit_code"] == 2
    assert "INCOMPLETE" in report.format_text()
