"""The isolation check of the load generator: every frame through the ledger."""

from __future__ import annotations

import json

import pytest

from bench.harness._isolation import IsolationCheck, user_name


def _frames(user: str, thread: str, client_id: str, run_id: str) -> list[str]:
    base = {"run_id": run_id, "thread_id": thread}
    return [
        json.dumps({"type": "connection_ready", "connection_id": f"conn_{user}", "user_id": user}),
        json.dumps(
            {"type": "agent_started", "agent": "echo", "client_id": client_id, **base, "seq": 1}
        ),
        json.dumps({"type": "agent_completed", "result": None, **base, "seq": 2}),
    ]


@pytest.mark.parametrize("deferred", [True, False])
def test_a_clean_conversation_has_no_violation(deferred: bool) -> None:
    iso = IsolationCheck("seed", 2, deferred=deferred)
    me = iso.user(0)
    assert me.user == user_name(0) == "u00000"
    me.begin()
    me.sent("c1", f"bench {me.canary} turn 1")
    for text in _frames(me.user, me.thread_id, "c1", "run_a"):
        me.frame(text)
    me.end(lost=False)
    iso.finish()
    assert iso.violation_count == 0
    assert iso.samples() == ()


@pytest.mark.parametrize("deferred", [True, False])
def test_another_users_canary_or_run_is_a_violation(deferred: bool) -> None:
    iso = IsolationCheck("seed", 2, deferred=deferred)
    me, other = iso.user(0), iso.user(1)
    me.begin()
    me.sent("c1", f"bench {me.canary} turn 1")
    frames = _frames(me.user, me.thread_id, "c1", "run_a")
    frames.insert(
        2,
        json.dumps(
            {
                "type": "agent_thinking",
                "thought": f"leak {other.canary}",
                "run_id": "run_a",
                "thread_id": me.thread_id,
                "seq": 2,
            }
        ),
    )
    frames.append(
        json.dumps(
            {
                "type": "agent_completed",
                "result": None,
                "run_id": "run_zz",
                "thread_id": me.thread_id,
                "seq": 5,
            }
        )
    )
    for text in frames:
        me.frame(text)
    me.end(lost=False)
    iso.finish()
    kinds = " ".join(iso.samples())
    assert iso.violation_count >= 2
    assert "[foreign-canary]" in kinds
    assert "[foreign-run]" in kinds


def test_a_run_id_given_to_two_users_is_a_violation() -> None:
    iso = IsolationCheck("seed", 2)
    checks = [iso.user(0), iso.user(1)]
    for check in checks:
        check.begin()
        check.sent("c1", f"bench {check.canary} turn 1")
        for text in _frames(check.user, check.thread_id, "c1", "run_same"):
            check.frame(text)
        check.end(lost=False)
    iso.finish()
    iso.finish()  # idempotent
    assert iso.violation_count == 2
    assert "[shared-run-id]" in iso.samples()[0]
