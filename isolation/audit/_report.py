"""The result of an audit: counts, violations with evidence, anomalies; text and JSON forms."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ._ledger import Anomaly, Violation

__all__ = [
    "EXIT_CLEAN",
    "EXIT_UNUSABLE",
    "EXIT_VIOLATIONS",
    "AuditReport",
    "ProbeResult",
    "ThreadProbe",
    "reply_shape",
]

EXIT_CLEAN: Final = 0
EXIT_VIOLATIONS: Final = 1
EXIT_UNUSABLE: Final = 2  # usage error, unreachable server, or an audit that could not finish


def _normalized(value: Any, ident: str) -> Any:
    if isinstance(value, str):
        return value.replace(ident, "<id>")
    if isinstance(value, Mapping):
        return {key: _normalized(item, ident) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalized(item, ident) for item in value]
    return value


def reply_shape(reply: Mapping[str, Any] | None, ident: str) -> str | None:
    """The reply to a cancel of ``ident`` with every echo of ``ident`` replaced by ``<id>``.

    Two replies with equal shapes tell the client nothing about which id exists.
    """
    if reply is None:
        return None
    return json.dumps(_normalized(reply, ident), sort_keys=True)


@attrs.frozen
class ProbeResult:
    """One IDOR probe: ``attacker`` cancelled ``victim``'s live run and an id that never existed."""

    attacker: str
    victim: str
    run_id: str
    bogus_id: str
    real_reply: Mapping[str, Any] | None
    bogus_reply: Mapping[str, Any] | None
    victim_run_open: bool  # the victim had not received its run's end when the probe was answered
    #: Sent while the attacker followed a thread of the victim's thread's id (its own).
    following: bool = False

    @property
    def indistinguishable(self) -> bool:
        return reply_shape(self.real_reply, self.run_id) == reply_shape(
            self.bogus_reply, self.bogus_id
        )

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["real_reply"] = dict(self.real_reply) if self.real_reply is not None else None
        out["bogus_reply"] = dict(self.bogus_reply) if self.bogus_reply is not None else None
        return out


@attrs.frozen
class ThreadProbe:
    """``attacker`` asked for the history of ``victim``'s thread and resumed it, and did
    the same with a look-alike thread id that never existed; the answers must not differ.

    ``own_thread``: the attacker had used that thread id itself (a colliding id), so its
    own thread of that name answers: the two answers may differ then.
    """

    attacker: str
    victim: str
    thread_id: str
    bogus_thread: str
    own_thread: bool
    history_real: Mapping[str, Any] | None
    history_bogus: Mapping[str, Any] | None
    resume_real: Mapping[str, Any] | None
    resume_bogus: Mapping[str, Any] | None

    def problems(self) -> list[str]:
        """What gives the victim's thread away (nothing when ``own_thread``)."""
        if self.own_thread:
            return []
        replies = (self.history_real, self.history_bogus, self.resume_real, self.resume_bogus)
        if all(reply is None for reply in replies):
            return []  # a server without thread look-ups: nothing told apart
        out = []
        for name, real, bogus in (
            ("history", self.history_real, self.history_bogus),
            ("resume", self.resume_real, self.resume_bogus),
        ):
            if reply_shape(real, self.thread_id) != reply_shape(bogus, self.bogus_thread):
                out.append(f"{name} of it got {_show(real)}, of {self.bogus_thread} {_show(bogus)}")
        page = self.history_real
        if page is not None and (page.get("events") != [] or page.get("has_more") is not False):
            out.append(f"its history is not an empty page: {_show(page)}")
        resumed = self.resume_real
        if resumed is not None and (
            resumed.get("recovered") is not False or resumed.get("reason") != "unknown_thread"
        ):
            out.append(f"its resume is not unknown_thread: {_show(resumed)}")
        return out

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        for name in ("history_real", "history_bogus", "resume_real", "resume_bogus"):
            value = getattr(self, name)
            out[name] = dict(value) if value is not None else None
        return out


def _show(reply: Mapping[str, Any] | None) -> str:
    return "no reply" if reply is None else json.dumps(dict(reply), sort_keys=True)[:300]


@attrs.frozen(kw_only=True)
class AuditReport:
    """Everything an audit found. ``exit_code``: 0 clean, 1 violations, 2 incomplete."""

    url: str
    seed: int
    users: int
    runs_per_user: int
    connections: int
    connect_failures: int
    connect_retries: int
    runs_planned: int
    runs_sent: int
    runs_started: int
    runs_completed: int
    runs_cancelled: int
    runs_errored: int
    runs_rejected: int
    runs_interrupted: int
    runs_lost: int
    cancels_sent: int
    frames_checked: int
    idor_probes: int
    idor_probes_live: int
    thread_probes: int
    drops: int
    drops_planned: int
    wall_time_s: float
    complete: bool
    violation_count: int
    violations: tuple[Violation, ...]
    anomaly_count: int
    anomalies: tuple[Anomaly, ...]
    probes: tuple[ProbeResult, ...] = ()
    #: Runs answered duplicate_message; history, threads and resume requests sent.
    runs_duplicate: int = 0
    lookups_sent: int = 0
    thread_lookups: tuple[ThreadProbe, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return self.complete and self.violation_count == 0 and self.connections > 0

    @property
    def exit_code(self) -> int:
        if self.violation_count:
            return EXIT_VIOLATIONS
        if not self.complete or self.connections == 0:
            return EXIT_UNUSABLE
        return EXIT_CLEAN

    def violation_kinds(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations).most_common())

    def anomaly_kinds(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self.anomalies).most_common())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in attrs.fields(AuditReport):
            value = getattr(self, field.name)
            if field.name in ("violations", "anomalies", "probes", "thread_lookups"):
                value = [item.as_dict() for item in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        out["exit_code"] = self.exit_code
        out["violation_kinds"] = self.violation_kinds()
        out["anomaly_kinds"] = self.anomaly_kinds()
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False, default=str)

    def format_text(self, max_violations: int = 20, max_anomalies: int = 10) -> str:
        verdict = (
            f"FAIL: {self.violation_count} isolation violation(s)"
            if self.violation_count
            else "INCOMPLETE: the audit did not finish; no violation seen so far"
            if not self.complete
            else "no users could connect"
            if self.connections == 0
            else "PASS: no isolation violation"
        )
        lines = [
            f"isolation audit of {self.url} (seed {self.seed})",
            f"  users {self.users} x {self.runs_per_user} runs; connections {self.connections}"
            f" ({self.connect_failures} failed, {self.connect_retries} handshakes retried);"
            f" drops {self.drops}/{self.drops_planned} planned",
            f"  runs: {self.runs_planned} planned, {self.runs_sent} sent, "
            f"{self.runs_started} started, {self.runs_completed} completed, "
            f"{self.runs_cancelled} cancelled, {self.runs_errored} errored, "
            f"{self.runs_rejected} rejected, {self.runs_duplicate} duplicates, "
            f"{self.runs_interrupted} interrupted by drops, {self.runs_lost} lost unanswered",
            f"  cancels sent {self.cancels_sent}; IDOR probes {self.idor_probes} "
            f"({self.idor_probes_live} on runs still open), thread probes {self.thread_probes} "
            f"(history and resume of another's thread: {len(self.thread_lookups)}); "
            f"thread look-ups sent {self.lookups_sent}",
            f"  frames checked {self.frames_checked}; wall time {self.wall_time_s:.1f} s",
            *(f"  note: {note}" for note in self.notes),
            verdict,
        ]
        if self.violation_count:
            kinds = ", ".join(f"{kind} {n}" for kind, n in self.violation_kinds().items())
            lines.append(f"violations by kind (kept): {kinds}")
            shown = self.violations[:max_violations]
            lines.extend(f"  - {v.evidence}" for v in shown)
            if self.violation_count > len(shown):
                lines.append(f"  ... {self.violation_count - len(shown)} more (all kept in --json)")
        if self.anomaly_count:
            kinds = ", ".join(f"{kind} {n}" for kind, n in self.anomaly_kinds().items())
            lines.append(
                f"protocol anomalies (not isolation violations): {self.anomaly_count}: {kinds}"
            )
            lines.extend(
                f"  - {a.user} conn {a.connection}: [{a.kind}] {a.detail}"
                for a in self.anomalies[:max_anomalies]
            )
        return "\n".join(lines)
