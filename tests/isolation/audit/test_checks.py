"""The checks across users: the IDOR helpers, history and thread lists, thread probes."""

from __future__ import annotations

import json
import random

from isolation.audit._checks import cross_check, lookalike_id
from isolation.audit._ledger import CanaryIndex, UserLedger
from isolation.audit._report import ThreadProbe


def test_a_lookalike_id_keeps_the_shape() -> None:
    bogus = lookalike_id("run_Ab3-x_9Z", random.Random(1))
    assert bogus.startswith("run_")
    assert len(bogus) == len("run_Ab3-x_9Z")
    assert bogus != "run_Ab3-x_9Z"
    assert [c.isdigit() for c in bogus] == [c.isdigit() for c in "run_Ab3-x_9Z"]


def _ledger(user: str) -> UserLedger:
    index = CanaryIndex.build([])
    ledger = UserLedger(user, index)
    ledger.begin_connection()
    ledger.observe(json.dumps({"type": "connection_ready", "user_id": user}))
    return ledger


def _run(ledger: UserLedger, run_id: str, thread: str) -> None:
    ledger.sent_message(client_id=f"c-{run_id}", text="hi", thread_id=thread)
    start = {"type": "agent_started", "run_id": run_id, "thread_id": thread, "seq": 1}
    ledger.observe(json.dumps({**start, "client_id": f"c-{run_id}"}))


def test_history_and_thread_lists_naming_another_users_run_or_thread() -> None:
    alice, bob = _ledger("alice"), _ledger("bob")
    _run(alice, "run_a", "main")
    _run(bob, "run_b", "t-bob")
    page = {"type": "history_page", "thread_id": "main", "has_more": False}
    event = {"type": "agent_thinking", "thread_id": "main", "seq": 2}
    events = [{**event, "run_id": "run_b"}, {**event, "run_id": "run_nobody"}]
    alice.observe(json.dumps({**page, "events": events}))
    listed = [{"thread_id": "main"}, {"thread_id": "t-bob"}, {"thread_id": "thr_lost"}]
    alice.observe(json.dumps({"type": "thread_list", "threads": listed}))
    cross_check([alice, bob], [])
    assert [v.kind for v in alice.violations] == ["foreign-history", "foreign-history"]
    assert [v.owner for v in alice.violations] == ["bob", "bob"]
    assert "a run of bob" in alice.violations[0].evidence
    assert "thread list names 't-bob'" in alice.violations[1].evidence
    assert bob.violations == ()


def _lookup(**changes: object) -> ThreadProbe:
    empty = {"type": "history_page", "events": [], "has_more": False}
    unknown = {"type": "resumed", "recovered": False, "reason": "unknown_thread"}
    values: dict[str, object] = {
        "attacker": "alice",
        "victim": "bob",
        "thread_id": "t-bob",
        "bogus_thread": "t-xyz",
        "own_thread": False,
        "history_real": {**empty, "thread_id": "t-bob"},
        "history_bogus": {**empty, "thread_id": "t-xyz"},
        "resume_real": {**unknown, "thread_id": "t-bob"},
        "resume_bogus": {**unknown, "thread_id": "t-xyz"},
    }
    values.update(changes)
    return ThreadProbe(**values)  # type: ignore[arg-type]  # the fields, by name


def test_thread_probes_must_not_tell_a_thread_apart() -> None:
    assert _lookup().problems() == []
    nothing = {"history_real": None, "history_bogus": None, "resume_real": None}
    assert _lookup(**nothing, resume_bogus=None).problems() == []  # no thread look-ups
    leaked = {"type": "history_page", "thread_id": "t-bob", "events": [{}], "has_more": True}
    problems = _lookup(history_real=leaked).problems()
    assert len(problems) == 2
    assert problems[0].startswith("history of it got")
    assert problems[1].startswith("its history is not an empty page")
    recovered = {"type": "resumed", "thread_id": "t-bob", "recovered": False, "reason": "retention"}
    assert len(_lookup(resume_real=recovered).problems()) == 2
    assert _lookup(own_thread=True, history_real=leaked).problems() == []  # its own thread
    assert _lookup().as_dict()["history_real"] == {
        "type": "history_page",
        "events": [],
        "has_more": False,
        "thread_id": "t-bob",
    }
    alice, bob = _ledger("alice"), _ledger("bob")
    cross_check([alice, bob], [], thread_lookups=[_lookup(history_real=leaked)])
    assert [v.kind for v in alice.violations] == ["thread-distinguishable"]
    assert alice.violations[0].owner == "bob"
