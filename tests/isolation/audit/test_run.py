"""The runtime audit against live servers: ours (clean) and small deliberately leaky ones.

A leaky server (``conftest.LeakyServer``) is a few dozen lines of chat.v1 over
trio-websocket with one classic bug: events broadcast to every connection, conversation
history keyed by a thread id that users do not own, or runs looked up in a process-wide
table by id. The audit must name each leak with evidence; against our server it must
find none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from isolation.audit._plan import make_plans
from isolation.audit._report import AuditReport
from isolation.audit._run import run_audit

if TYPE_CHECKING:
    from tests.isolation.audit.conftest import AuditKit


# -- (a) our server: clean --------------------------------------------------------------


async def test_a_clean_audit_of_our_server(kit: AuditKit) -> None:
    cfg = kit.config("", users=50, runs=4, cancel_rate=0.2, drop_rate=0.05, idor_rate=0.15)
    # Runs of ~1.2 s: long enough for probes to hit runs that are provably still open,
    # even on a machine busy with other work.
    async with kit.our_server(agent_delay_ms=300) as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.violations == (), report.format_text()
    assert report.anomalies == (), report.format_text()
    assert report.exit_code == 0
    assert report.clean
    plans = make_plans(cfg, 7)  # the plan is a pure function of config and seed
    probers = sum(plan.victim is not None for plan in plans)
    assert probers > 0
    # Each prober cancels the victim's run twice: before and while following a thread
    # named like the victim's (its own).
    assert sum(probe.following for probe in report.probes) == probers
    assert report.idor_probes == 2 * probers
    assert report.idor_probes_live > 0, report.probes
    assert report.thread_probes == probers
    shown = report.format_text()
    assert report.drops == report.drops_planned == sum(plan.drops for plan in plans) > 0, shown
    assert report.connections == 50 + report.drops + 1, shown  # one preflight connection
    # Every run is accounted for.
    assert report.runs_planned == 50 * 4 + probers, shown
    assert report.runs_sent == report.runs_planned, shown
    assert report.runs_rejected == report.runs_errored == 0, shown
    assert report.runs_started + report.runs_lost + report.runs_duplicate == report.runs_sent, shown
    ended = report.runs_completed + report.runs_cancelled + report.runs_interrupted
    assert ended == report.runs_started, shown
    assert report.runs_cancelled > 0, shown
    assert report.frames_checked > 4 * report.runs_started, shown
    # Our server answers a probe of a live run exactly like one of a missing run.
    for probe in report.probes:
        assert probe.indistinguishable
        assert probe.real_reply is not None
        assert probe.real_reply["code"] == "run_not_found"
    # History and resume of another user's thread: like a thread that never existed.
    # (A prober that used the victim's thread id itself, a colliding one, skips them.)
    assert 0 < len(report.thread_lookups) <= probers
    for lookup in report.thread_lookups:
        assert lookup.problems() == []
        assert lookup.history_real == {
            "type": "history_page",
            "thread_id": lookup.thread_id,
            "events": [],
            "has_more": False,
        }
        assert lookup.resume_real is not None
        assert lookup.resume_real["reason"] == "unknown_thread"
    # Every user read its thread list and some of its histories.
    assert report.lookups_sent >= 50 * 2, shown
    assert report.seed == 7
    assert "PASS" in report.format_text()


# -- (b) leaky servers ------------------------------------------------------------------


def _owned_by_others(report: AuditReport) -> None:
    """Evidence names the user who saw the leak and, where known, whose data it was."""
    for violation in report.violations:
        assert violation.evidence.startswith(violation.user), violation
        assert violation.owner != violation.user, violation
        if violation.kind == "foreign-canary":
            assert violation.owner is not None, violation


async def test_b_the_audit_catches_a_broadcasting_server(kit: AuditKit) -> None:
    async with kit.leaky_server("broadcast") as url:
        report = await run_audit(kit.config(url, users=8, runs=2, drop_rate=0.0))
    assert report.exit_code == 1
    kinds = report.violation_kinds()
    assert {"foreign-canary", "foreign-run"} <= set(kinds), kinds
    _owned_by_others(report)
    canary = next(v for v in report.violations if v.kind == "foreign-canary")
    assert f"carries {canary.owner}'s" in canary.evidence
    assert canary.frame is not None
    assert canary.connection is not None
    run = next(v for v in report.violations if v.kind == "foreign-run")
    assert f"[run of {run.owner}]" in run.evidence  # whose run leaked, found across users
    assert "FAIL" in report.format_text()


async def test_b_the_audit_catches_history_keyed_by_a_shared_thread_id(kit: AuditKit) -> None:
    # No random collisions: only the thread probes (a user writing into another
    # user's thread) can reveal that history is keyed by the bare thread id.
    cfg = kit.config("", users=12, runs=3, collide_rate=0.0, idor_rate=0.3, drop_rate=0.0)
    async with kit.leaky_server("shared-threads") as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.thread_probes > 0
    assert set(report.violation_kinds()) == {"foreign-canary"}, report.format_text()
    _owned_by_others(report)
    probers = {p.attacker: p.victim for p in report.probes}
    assert any(probers.get(v.user) == v.owner for v in report.violations)
    # With colliding ids ("main", "default", ...) users leak to each other without probes.
    cfg = kit.config("", users=12, runs=3, collide_rate=1.0, idor_rate=0.0, drop_rate=0.0)
    async with kit.leaky_server("shared-threads") as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    assert report.violation_kinds().get("foreign-canary", 0) > 0
    _owned_by_others(report)


async def test_b_the_audit_catches_cancel_by_run_id_of_any_user(kit: AuditKit) -> None:
    cfg = kit.config("", users=10, runs=2, idor_rate=0.5, cancel_rate=0.0, drop_rate=0.0)
    async with kit.leaky_server("global-runs", step_s=0.4) as url:
        report = await run_audit(attrs.evolve(cfg, url=url))
    kinds = report.violation_kinds()
    assert report.idor_probes_live > 0
    assert {"idor-distinguishable", "idor-cancelled", "unrequested-cancel"} <= set(kinds), kinds
    _owned_by_others(report)
    probe = next(v for v in report.violations if v.kind == "idor-distinguishable")
    assert "got no reply" in probe.evidence
    assert "'run_not_found'" in probe.evidence
    cancelled = next(v for v in report.violations if v.kind == "idor-cancelled")
    assert f"after {cancelled.owner} sent cancel" in cancelled.evidence


async def test_unexpected_closes_are_anomalies_not_violations(kit: AuditKit) -> None:
    async with kit.leaky_server("closer") as url:
        report = await run_audit(kit.config(url, users=5, runs=2, drop_rate=0.0, idor_rate=0.0))
    assert report.violations == (), report.format_text()
    kinds = report.anomaly_kinds()
    assert kinds.get("server-closed", 0) >= 5, kinds
    closed = next(a for a in report.anomalies if a.kind == "server-closed")
    assert "1011 internal_error" in closed.detail
    assert report.runs_interrupted == report.runs_started > 0
    assert "protocol anomalies (not isolation violations)" in report.format_text()
    assert report.exit_code == 0
