"""The per-user frame checker: a clean transcript passes; every violation kind is caught.

Negative controls first-class: each case feeds one user's ledger a transcript with
exactly one defect and checks the kind, the evidence (who, which frame, whose data)
and that nothing else is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import pytest

from isolation.audit._ledger import (
    ANOMALY_KINDS,
    CANARY_PATTERN,
    VIOLATION_KINDS,
    CanaryIndex,
    CanaryOwner,
    UserLedger,
    derive_canary,
    excerpt,
)

SEED: Final = "ledger-tests"
A_USER: Final = derive_canary(SEED, "user", "alice")
A_THREAD: Final = derive_canary(SEED, "thread", "alice")
A_RUN1: Final = derive_canary(SEED, "run", "alice", 1)
A_RUN2: Final = derive_canary(SEED, "run", "alice", 2)
B_USER: Final = derive_canary(SEED, "user", "bob")
B_THREAD: Final = derive_canary(SEED, "thread", "bob")
B_RUN1: Final = derive_canary(SEED, "run", "bob", 1)

THREAD: Final = f"t-{A_THREAD}"
TEXT1: Final = f"{A_USER} {A_RUN1} count these words"
TEXT2: Final = f"{A_USER} {A_RUN2} count these too"


def index() -> CanaryIndex:
    return CanaryIndex.build(
        [
            (A_USER, CanaryOwner("alice", "user")),
            (A_THREAD, CanaryOwner("alice", "thread")),
            (A_RUN1, CanaryOwner("alice", "run 1")),
            (A_RUN2, CanaryOwner("alice", "run 2")),
            (B_USER, CanaryOwner("bob", "user")),
            (B_THREAD, CanaryOwner("bob", "thread")),
            (B_RUN1, CanaryOwner("bob", "run 1")),
        ]
    )


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def event(kind: str, run_id: str, seq: int, thread: str = THREAD, **fields: Any) -> str:
    return frame(kind, **fields, run_id=run_id, thread_id=thread, seq=seq)


def ready(user: str = "alice", connection_id: str = "conn_1") -> str:
    return frame("connection_ready", connection_id=connection_id, user_id=user, limits={})


def started(run_id: str = "run_a", client_id: str = f"c-{A_RUN1}", thread_id: str = THREAD) -> str:
    return event("agent_started", run_id, 1, thread_id, agent="echo", client_id=client_id)


def whole_run(run_id: str, text: str, thread: str = THREAD, first_seq: int = 2) -> list[str]:
    s = first_seq
    return [
        event("agent_thinking", run_id, s, thread, thought="hm"),
        event("tool_executing", run_id, s + 1, thread, tool_name="wc", tool_input={"text": text}),
        event("tool_completed", run_id, s + 2, thread, tool_name="wc", results={"words": 4}),
        event("agent_completed", run_id, s + 3, thread, result={"text": text, "words": 4}),
    ]


def alice(*, connected: bool = True, sent: bool = True) -> UserLedger:
    """Alice's ledger: connected, one message (run 1 on THREAD) sent and started as run_a."""
    ledger = UserLedger("alice", index())
    if connected:
        ledger.begin_connection()
        ledger.observe(ready())
    if sent:
        ledger.sent_message(client_id=f"c-{A_RUN1}", text=TEXT1, thread_id=THREAD, tag=A_RUN1)
        ledger.observe(started())
    return ledger


def kinds(ledger: UserLedger) -> list[str]:
    return [v.kind for v in ledger.violations]


def anomaly_kinds(ledger: UserLedger) -> list[str]:
    return [a.kind for a in ledger.anomalies]


# -- the clean transcript --------------------------------------------------------------


def test_a_clean_transcript_reports_nothing() -> None:
    ledger = alice()
    for text in whole_run("run_a", TEXT1):
        ledger.observe(text)
    # A second run: no thread sent, so the server picks one; cancelled by alice.
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, tag=A_RUN2)
    seen = ledger.observe(started("run_b", f"c-{A_RUN2}", thread_id="thr_server"))
    assert (seen.type, seen.run_id, seen.tag) == ("agent_started", "run_b", A_RUN2)
    ledger.sent_cancel("run_b")
    ledger.observe(event("run_cancelled", "run_b", 2, "thr_server", reason="cancelled_by_client"))
    # A late cancel of her own ended run, and probes of ids that are not hers.
    ledger.sent_cancel("run_a")
    ledger.observe(frame("error", code="run_not_found", message="no such run", ref="run_a"))
    ledger.sent_cancel("run_of_bob")
    ledger.observe(frame("error", code="run_not_found", message="no such run", ref="run_of_bob"))
    # A message on bob's thread (a probe) echoes bob's thread canary: she sent it herself.
    ledger.sent_message(
        client_id="c1", text=TEXT2, thread_id=f"t-{B_THREAD}", tag=derive_canary(SEED, "x")
    )
    ledger.observe(started("run_c", "c1", thread_id=f"t-{B_THREAD}"))
    for text in whole_run("run_c", TEXT2, f"t-{B_THREAD}"):
        ledger.observe(text)
    ledger.observe(frame("pong"))
    ledger.observe(frame("auth_ok", expires_at=1.0))

    assert ledger.finish(connection_ended=False) == ()
    assert ledger.anomalies == ()
    counts = ledger.counts()
    assert (counts.sent, counts.started, counts.completed, counts.cancelled) == (3, 3, 2, 1)
    assert (counts.frames, counts.connections, counts.cancels_sent) == (17, 1, 3)
    assert ledger.threads_assigned == {"thr_server"}
    assert ledger.threads_sent == {THREAD, f"t-{B_THREAD}"}
    assert ledger.connection_ids == ("conn_1",)
    assert ledger.terminal_of("run_b") == "run_cancelled"
    assert ledger.thread_of("run_b") == "thr_server"


def test_observed_tells_what_a_frame_answered() -> None:
    ledger = alice()
    seen = ledger.observe(event("agent_completed", "run_a", 2, result={"text": TEXT1}))
    assert seen.terminal
    assert seen.run_id == "run_a"
    assert seen.tag == A_RUN1
    assert ledger.observe("not json").frame is None


# -- every violation kind ---------------------------------------------------------------

Case = Callable[[UserLedger], None]


def _wrong_user(ledger: UserLedger) -> None:
    ledger.begin_connection()
    ledger.observe(ready(user="bob"))


def _foreign_canary(ledger: UserLedger) -> None:
    ledger.observe(event("agent_thinking", "run_a", 2, thought=f"bob said {B_RUN1}"))


def _foreign_start(ledger: UserLedger) -> None:
    ledger.observe(started("run_b", client_id="c-of-bob"))


def _start_without_client_id(ledger: UserLedger) -> None:
    ledger.observe(event("agent_started", "run_b", 1, agent="echo"))


def _foreign_run(ledger: UserLedger) -> None:
    ledger.observe(event("agent_thinking", "run_of_bob", 2, "thr_bob", thought="x"))


def _duplicate_run_id(ledger: UserLedger) -> None:
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(started("run_a", f"c-{A_RUN2}"))


def _thread_of_start(ledger: UserLedger) -> None:
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(started("run_b", f"c-{A_RUN2}", thread_id="main"))


def _thread_of_event(ledger: UserLedger) -> None:
    ledger.observe(event("agent_thinking", "run_a", 2, "thr_other", thought="x"))


def _seq_gap(ledger: UserLedger) -> None:
    ledger.observe(event("agent_thinking", "run_a", 3, thought="x"))


def _seq_repeat(ledger: UserLedger) -> None:
    ledger.observe(event("agent_thinking", "run_a", 2, thought="x"))
    ledger.observe(event("agent_thinking", "run_a", 2, thought="y"))


def _seq_of_start(ledger: UserLedger) -> None:
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(event("agent_started", "run_b", 2, agent="e", client_id=f"c-{A_RUN2}"))


def _after_terminal(ledger: UserLedger) -> None:
    ledger.observe(event("agent_completed", "run_a", 2, result={}))
    ledger.observe(event("agent_thinking", "run_a", 3, thought="x"))


def _second_terminal(ledger: UserLedger) -> None:
    ledger.observe(event("agent_completed", "run_a", 2, result={}))
    ledger.observe(event("agent_error", "run_a", 3, error={"code": "x", "message": "y"}))


def _foreign_ref(ledger: UserLedger) -> None:
    ledger.observe(frame("error", code="run_not_found", message="no such run", ref="run_of_bob"))


def _unrequested_cancel(ledger: UserLedger) -> None:
    ledger.observe(event("run_cancelled", "run_a", 2, reason="cancelled_by_client"))
    ledger.finish(connection_ended=False)


def _no_terminal(ledger: UserLedger) -> None:
    ledger.finish(connection_ended=False)


def _no_answer(ledger: UserLedger) -> None:
    ledger.observe(event("agent_completed", "run_a", 2, result={}))
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, tag=A_RUN2)
    ledger.finish(connection_ended=False)


CASES: Final = (
    ("wrong-user", _wrong_user, "connection_ready for 'bob'"),
    ("foreign-canary", _foreign_canary, f"carries bob's run 1 canary {B_RUN1}"),
    ("foreign-start", _foreign_start, "client_id 'c-of-bob'"),
    ("foreign-start", _start_without_client_id, "client_id None"),
    ("foreign-run", _foreign_run, "agent_thinking of run run_of_bob never announced"),
    ("duplicate-run-id", _duplicate_run_id, "reuses run_id run_a"),
    ("foreign-thread", _thread_of_start, f"on thread 'main', this user sent '{THREAD}'"),
    ("foreign-thread", _thread_of_event, "on thread 'thr_other'"),
    ("seq", _seq_gap, "seq 3 after 1"),
    ("seq", _seq_repeat, "seq 2 after 2"),
    ("seq", _seq_of_start, "agent_started with seq 2"),
    ("after-terminal", _after_terminal, "agent_thinking of run run_a after its agent_completed"),
    ("after-terminal", _second_terminal, "agent_error of run run_a after its agent_completed"),
    ("foreign-ref", _foreign_ref, "refers to 'run_of_bob'"),
    ("unrequested-cancel", _unrequested_cancel, "never cancelled it"),
    ("no-terminal", _no_terminal, "run run_a never ended"),
    ("no-answer", _no_answer, f"message {A_RUN2}"),
)


@pytest.mark.parametrize(("kind", "case", "detail"), CASES, ids=[c[1].__name__ for c in CASES])
def test_each_violation_is_reported_with_evidence(kind: str, case: Case, detail: str) -> None:
    ledger = alice(connected=case is not _wrong_user, sent=case is not _wrong_user)
    case(ledger)
    assert kinds(ledger) == [kind], ledger.violations
    violation = ledger.violations[0]
    assert violation.user == "alice"
    assert violation.evidence.startswith("alice conn 1 ")
    assert f"[{kind}]" in violation.evidence
    assert detail in violation.evidence, violation.evidence
    assert kind in VIOLATION_KINDS
    if violation.frame is not None:  # evidence of a frame quotes the frame
        assert violation.evidence.endswith("}") or "..." in violation.evidence
        assert f"frame {violation.frame}:" in violation.evidence
    assert ledger.violation_count == 1


def test_foreign_canary_evidence_names_owner_frame_and_excerpt() -> None:
    ledger = alice()
    padding = "x" * 2000
    ledger.observe(event("agent_thinking", "run_a", 2, thought=f"{padding} {B_USER} {padding}"))
    (violation,) = ledger.violations
    assert violation.owner == "bob"
    assert violation.frame == 3  # ready, agent_started, this one
    assert violation.connection == 1
    assert B_USER in violation.evidence  # the excerpt is cut around the canary
    assert len(violation.evidence) < 400
    assert "bob's user canary" in violation.evidence


def test_each_foreign_canary_of_a_frame_is_reported() -> None:
    ledger = alice()
    ledger.observe(event("agent_thinking", "run_a", 2, thought=f"{B_USER} {B_THREAD}"))
    assert [v.owner for v in ledger.violations] == ["bob", "bob"]
    assert "user canary" in ledger.violations[0].evidence
    assert "thread canary" in ledger.violations[1].evidence


def test_unknown_canary_shaped_strings_are_not_flagged() -> None:
    ledger = alice()
    stranger = derive_canary("another audit", "user", "carol")
    assert CANARY_PATTERN.fullmatch(stranger)
    ledger.observe(event("agent_thinking", "run_a", 2, thought=stranger))
    assert ledger.violations == ()


def test_own_canaries_anywhere_are_fine_but_another_runs_is_crosstalk() -> None:
    ledger = alice()
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(started("run_b", f"c-{A_RUN2}"))
    ledger.observe(event("agent_thinking", "run_a", 2, thought=f"{A_USER} {A_THREAD} {A_RUN1}"))
    assert ledger.violations == ()
    assert ledger.anomalies == ()
    ledger.observe(event("agent_thinking", "run_b", 2, thought=f"about {A_RUN1}"))
    assert ledger.violations == ()
    assert anomaly_kinds(ledger) == ["run-crosstalk"]


def test_a_cancel_this_user_sent_is_no_violation_and_shutdown_is_an_anomaly() -> None:
    ledger = alice()
    ledger.sent_cancel("run_a")
    ledger.observe(event("run_cancelled", "run_a", 2, reason="cancelled_by_client"))
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(started("run_b", f"c-{A_RUN2}"))
    ledger.observe(event("run_cancelled", "run_b", 2, reason="server_shutdown"))
    assert ledger.finish(connection_ended=False) == ()
    assert anomaly_kinds(ledger) == ["server-cancel"]


def test_a_lost_connection_counts_unfinished_work_instead_of_reporting_it() -> None:
    ledger = alice()
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    assert ledger.finish(connection_ended=True) == ()
    counts = ledger.counts()
    assert (counts.interrupted, counts.lost, counts.started) == (1, 1, 1)


def test_a_reconnect_ends_the_old_connection_and_judges_the_new_one() -> None:
    ledger = alice()
    assert ledger.begin_connection() == 2  # the old one counts as lost
    ledger.observe(ready(connection_id="conn_2"))
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.observe(started("run_b", f"c-{A_RUN2}"))
    for text in whole_run("run_b", TEXT2):
        ledger.observe(text)
    # An event of the first connection's run on the second: the same user's run, relayed
    # through its thread to the connection that now follows it; nothing to report.
    ledger.observe(event("agent_thinking", "run_a", 2, thought="resumed"))
    assert ledger.finish(connection_ended=False) == ()
    assert anomaly_kinds(ledger) == []
    assert ledger.connection_ids == ("conn_1", "conn_2")
    assert ledger.counts().interrupted == 1
    # The first frame of the new connection was judged on its own.
    ledger2 = alice()
    ledger2.begin_connection()
    ledger2.observe(ready(user="bob"))
    assert ledger2.violations[0].connection == 2


def test_colliding_client_ids_pair_in_order_and_refusals_answer_a_message() -> None:
    ledger = alice(sent=False)
    for tag in ("m1", "m2", "m3"):
        ledger.sent_message(client_id="c1", text=f"{A_USER} {tag}", thread_id="main", tag=tag)
    first = ledger.observe(started("run_1", "c1", thread_id="main"))
    refused = ledger.observe(frame("error", code="too_many_runs", message="x", ref="c1"))
    third = ledger.observe(started("run_3", "c1", thread_id="main"))
    assert (first.tag, refused.tag, third.tag) == ("m1", "m2", "m3")
    assert ledger.counts().rejected == 1
    # A refusal with nothing pending for a client_id she used is odd, not a leak.
    ledger.observe(frame("error", code="too_many_runs", message="x", ref="c1"))
    assert ledger.violations == ()
    assert anomaly_kinds(ledger) == ["unpaired-error"]


def test_protocol_anomalies_are_not_violations() -> None:
    ledger = UserLedger("alice", index())
    ledger.begin_connection()
    ledger.observe(frame("pong"))  # before connection_ready
    ledger.observe(ready())
    ledger.observe(ready())
    ledger.observe("[1, 2]")
    ledger.observe(frame("surprise"))
    ledger.observe(frame("error", code="rate_limited", message="slow down"))
    ledger.observe(frame("connection_ready", connection_id="c"))
    ledger.sent_message(client_id=f"c-{A_RUN1}", text=TEXT1, thread_id=THREAD, tag=A_RUN1)
    ledger.observe(started())
    ledger.observe(event("agent_error", "run_a", 2, error={"code": "boom", "message": "x"}))
    ledger.observe(frame("agent_thinking", thought="no run id"))
    assert ledger.finish(connection_ended=False) == ()
    assert anomaly_kinds(ledger) == [
        "ready-not-first",
        "duplicate-ready",
        "bad-frame",
        "unknown-type",
        "rate-limited",
        "duplicate-ready",
        "no-user-id",
        "agent-error",
        "bad-frame",
    ]
    assert set(anomaly_kinds(ledger)) <= set(ANOMALY_KINDS)
    assert ledger.counts().errored == 1


def test_a_message_lost_to_an_anonymous_rate_limit_is_an_anomaly() -> None:
    ledger = alice()
    ledger.observe(event("agent_completed", "run_a", 2, result={}))
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, tag=A_RUN2)
    ledger.sent_message(client_id="c-3", text=TEXT2, tag="third")
    ledger.observe(frame("error", code="rate_limited", message="slow down"))  # names nothing
    ledger.finish(connection_ended=False)
    assert kinds(ledger) == ["no-answer"]  # one is excused, not both
    assert anomaly_kinds(ledger) == ["rate-limited", "rate-limited"]


def test_a_connection_without_connection_ready_is_an_anomaly() -> None:
    ledger = UserLedger("alice", index())
    ledger.begin_connection()
    ledger.observe(frame("pong"))
    ledger.finish(connection_ended=False)
    assert "no-ready" in anomaly_kinds(ledger)
    silent = UserLedger("alice", index())
    silent.begin_connection()
    silent.finish(connection_ended=True)  # a failed connect: the auditor says why
    assert silent.anomalies == ()


def test_findings_are_capped_but_counted() -> None:
    ledger = UserLedger("alice", index(), max_findings=5)
    ledger.begin_connection()
    ledger.observe(ready())
    for n in range(20):
        ledger.observe(event("agent_thinking", f"run_x{n}", 2, thought=B_USER))
    assert len(ledger.violations) == 5
    assert ledger.violation_count == 40  # a foreign canary and a foreign run each


def test_sending_needs_a_connection() -> None:
    ledger = UserLedger("alice", index())
    with pytest.raises(RuntimeError):
        ledger.sent_message(client_id="c", text="t")
    with pytest.raises(RuntimeError):
        ledger.observe(ready())


# -- canaries ------------------------------------------------------------------------


def test_canaries_are_derived_reproducibly_and_distinct() -> None:
    assert derive_canary(1, "run", "u", 1) == derive_canary(1, "run", "u", 1)
    many = {derive_canary(7, "run", f"u{n}", k) for n in range(200) for k in range(5)}
    assert len(many) == 1000
    assert all(CANARY_PATTERN.fullmatch(c) for c in many)
    assert derive_canary(1, "x") != derive_canary(2, "x")


def test_canary_index_rejects_bad_entries_and_scans() -> None:
    with pytest.raises(ValueError, match="not a canary"):
        CanaryIndex.build([("hello", CanaryOwner("a", "user"))])
    with pytest.raises(ValueError, match="two owners"):
        CanaryIndex.build([(A_USER, CanaryOwner("a", "user")), (A_USER, CanaryOwner("b", "user"))])
    idx = index()
    assert len(idx) == 7
    found = list(idx.scan(f"x{A_USER}y {B_RUN1}"))
    assert [(c, o.user, p) for c, o, p in found] == [(A_USER, "alice", 1), (B_RUN1, "bob", 21)]
    assert idx.owner(B_THREAD) == CanaryOwner("bob", "thread")


def test_excerpt_keeps_short_text_and_windows_long_text() -> None:
    assert excerpt("short") == "short"
    long = "a" * 500 + "NEEDLE" + "b" * 500
    cut = excerpt(long, long.index("NEEDLE"), width=100)
    assert "NEEDLE" in cut
    assert cut.startswith("...")
    assert cut.endswith("...")
    assert excerpt(long, None, width=10) == "a" * 10 + "..."


def test_violations_serialise() -> None:
    ledger = alice()
    ledger.observe(event("agent_thinking", "run_a", 2, thought=B_USER))
    as_dict = ledger.violations[0].as_dict()
    assert as_dict["kind"] == "foreign-canary"
    assert as_dict["owner"] == "bob"
    json.dumps(as_dict)


# -- durable threads: look-ups, duplicates, relayed runs ---------------------------------


def test_a_message_lost_in_a_drop_may_start_on_a_later_connection() -> None:
    ledger = alice()
    ledger.sent_message(client_id=f"c-{A_RUN2}", text=TEXT2, thread_id=THREAD, tag=A_RUN2)
    ledger.begin_connection()  # the first is lost with run 2 unanswered
    ledger.observe(ready(connection_id="conn_2"))
    assert ledger.counts().lost == 1
    # The new connection follows THREAD: the run the old one started is relayed to it.
    accepted = frame(
        "message_accepted",
        run_id="run_b",
        thread_id=THREAD,
        thread_seq=5,
        text=TEXT2,
        client_id=f"c-{A_RUN2}",
    )
    ledger.observe(accepted)
    seen = ledger.observe(started("run_b", f"c-{A_RUN2}"))
    assert (seen.run_id, seen.tag) == ("run_b", None)  # no message of this connection waits
    for text in whole_run("run_b", TEXT2):
        ledger.observe(text)
    assert ledger.finish(connection_ended=False) == ()
    assert anomaly_kinds(ledger) == []
    assert ledger.counts().lost == 0
    assert ledger.counts().completed == 1
    assert ledger.named_runs == {"run_b": "alice: message_accepted of run run_b"}


def test_starts_are_paired_by_thread_when_client_ids_repeat() -> None:
    ledger = alice()
    ledger.sent_message(client_id="c1", text=TEXT2, thread_id="main", tag=A_RUN2)
    ledger.sent_message(client_id="c1", text=TEXT2, tag="second")
    # The second message's start (a new thread) comes first.
    seen = ledger.observe(started("run_b", "c1", thread_id="thr_new"))
    assert seen.tag == "second"
    seen = ledger.observe(started("run_c", "c1", thread_id="main"))
    assert seen.tag == A_RUN2
    assert ledger.violations == ()


def test_a_duplicate_of_an_own_run_answers_the_message() -> None:
    ledger = alice()
    ledger.sent_message(client_id=f"c-{A_RUN1}", text=TEXT1, thread_id=THREAD, tag="again")
    dup = frame("duplicate_message", thread_id=THREAD, client_id=f"c-{A_RUN1}", run_id="run_a")
    seen = ledger.observe(dup)
    assert (seen.type, seen.tag) == ("duplicate_message", "again")
    assert ledger.violations == ()
    assert ledger.counts().duplicates == 1
    # The same run named for a message on another thread: odd, but the user's own.
    ledger.sent_message(client_id=f"c-{A_RUN1}", text=TEXT1, thread_id="other", tag="third")
    ledger.observe(
        frame("duplicate_message", thread_id="other", client_id=f"c-{A_RUN1}", run_id="run_a")
    )
    assert ledger.violations == ()
    assert anomaly_kinds(ledger) == ["duplicate-mismatch"]


def test_a_duplicate_naming_a_run_the_user_never_had_is_a_violation() -> None:
    ledger = alice()
    ledger.sent_message(client_id="c1", text=TEXT2, thread_id="main", tag=A_RUN2)
    seen = ledger.observe(
        frame("duplicate_message", thread_id="main", client_id="c1", run_id="run_of_bob")
    )
    assert seen.tag == A_RUN2  # it answers the message all the same
    assert kinds(ledger) == ["foreign-duplicate"]
    (violation,) = ledger.violations
    assert violation.run_id == "run_of_bob"
    assert "which this user never had" in violation.evidence


def test_a_duplicate_for_nothing_pending() -> None:
    ledger = alice()
    ledger.observe(frame("duplicate_message", thread_id=THREAD, client_id="zz", run_id="run_a"))
    assert kinds(ledger) == ["foreign-ref"]
    ledger = alice()
    ledger.observe(
        frame("duplicate_message", thread_id=THREAD, client_id=f"c-{A_RUN1}", run_id="run_a")
    )
    assert kinds(ledger) == []
    assert anomaly_kinds(ledger) == ["unpaired-error"]


def test_message_accepted_on_a_thread_not_the_users_is_a_violation() -> None:
    ledger = alice()
    ledger.observe(
        frame("message_accepted", run_id="run_x", thread_id="t-bob", thread_seq=1, text="hi")
    )
    ledger.observe(
        frame(
            "message_accepted",
            run_id="run_a",
            thread_id=THREAD,
            thread_seq=1,
            text="hi",
            client_id="c-bob",
        )
    )
    assert kinds(ledger) == ["foreign-message", "foreign-message"]


def test_history_pages_and_thread_lists_are_judged() -> None:
    ledger = alice()
    ledger.sent_lookup(f"t-{B_THREAD}")  # the answer echoes bob's thread id: hers to see
    ledger.observe(frame("history_page", thread_id=f"t-{B_THREAD}", events=[], has_more=False))
    assert kinds(ledger) == []
    own = json.loads(started())
    page = frame(
        "history_page",
        thread_id=THREAD,
        events=[own, {**own, "run_id": "run_zz"}, {**own, "thread_id": "main"}, 3],
        has_more=False,
    )
    ledger.observe(page)
    assert kinds(ledger) == ["foreign-history"]
    assert "holds an event of 'main'" in ledger.violations[0].evidence
    assert anomaly_kinds(ledger) == ["bad-frame"]
    assert set(ledger.named_runs) == {"run_zz"}
    ledger.observe(
        frame("thread_list", threads=[{"thread_id": THREAD}, {"thread_id": "main"}, {"x": 1}])
    )
    assert set(ledger.listed_threads) == {"main"}
    assert anomaly_kinds(ledger) == ["bad-frame", "bad-frame"]
    ledger.observe(frame("resumed", thread_id=THREAD, recovered=False, reason="unknown_thread"))
    assert ledger.counts().lookups == 1
    assert "unknown-type" not in anomaly_kinds(ledger)
