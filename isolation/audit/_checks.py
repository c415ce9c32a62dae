"""Checks across users after an audit, and the IDOR helpers: pure functions, no I/O.

Per-user checks live in each :class:`~isolation.audit._ledger.UserLedger`; what only shows
when several users are compared lives here: an id handed to two users, a thread the
server chose that another user also writes to, and the verdict on each IDOR probe.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence

import attrs

from ._ledger import UserLedger, Violation
from ._report import ProbeResult, ThreadProbe

__all__ = ["cross_check", "lookalike_id", "violations_with_owners"]


def lookalike_id(real: str, rng: random.Random) -> str:
    """An id shaped like ``real`` (same prefix, length and character classes), but random.

    A probe with a differently shaped id could be refused by validation alone.
    """
    seps = [i for i, char in enumerate(real[: len(real) // 2]) if char in "_-:."]
    cut = seps[0] + 1 if seps else 0
    out = [real[:cut]]
    for char in real[cut:]:
        if char.isdigit():
            out.append(rng.choice("0123456789"))
        elif char.islower():
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz"))
        elif char.isupper():
            out.append(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        else:
            out.append(char)
    bogus = "".join(out)
    return bogus if bogus != real else bogus + "0"


def _shared(
    ledgers: Sequence[UserLedger], kind: str, label: str, ids: Iterable[tuple[str, str]]
) -> None:
    """One violation per holder of an id that more than one user holds."""
    by_user = {ledger.user: ledger for ledger in ledgers}
    holders: dict[str, list[str]] = {}
    for user, ident in ids:
        if user not in holders.setdefault(ident, []):
            holders[ident].append(user)
    for ident, users in holders.items():
        for user in users if len(users) > 1 else ():
            others = [u for u in users if u != user]
            evidence = f"{user}: [{kind}] {label} {ident} was also given to {others[:5]}"
            run_id = ident if label == "run_id" else None
            by_user[user].add_violation(
                Violation(user, kind, evidence, run_id=run_id, owner=others[0])
            )


def cross_check(
    ledgers: Sequence[UserLedger],
    probes: Sequence[ProbeResult],
    probe_threads: Collection[tuple[str, str]] = (),
    thread_lookups: Sequence[ThreadProbe] = (),
) -> None:
    """Add the cross-user violations to the ledgers concerned.

    ``probe_threads`` are (user, thread) pairs a user wrote to on purpose: another
    user's thread, as a probe; they do not count as sharing.
    """
    _shared(
        ledgers,
        "shared-run-id",
        "run_id",
        ((ledger.user, run_id) for ledger in ledgers for run_id in ledger.run_ids()),
    )
    _shared(
        ledgers,
        "shared-connection-id",
        "connection_id",
        ((ledger.user, conn) for ledger in ledgers for conn in ledger.connection_ids),
    )
    threads: dict[str, set[str]] = {}
    for ledger in ledgers:
        for thread in ledger.threads_sent | ledger.threads_assigned:
            if (ledger.user, thread) not in probe_threads:
                threads.setdefault(thread, set()).add(ledger.user)
    for ledger in ledgers:
        for thread in sorted(ledger.threads_assigned):
            others = sorted(threads[thread] - {ledger.user})
            if others:
                evidence = (
                    f"{ledger.user}: [shared-thread-id] the server put a run on thread "
                    f"{thread!r}, which {others[:3]} also use"
                )
                ledger.add_violation(
                    Violation(ledger.user, "shared-thread-id", evidence, owner=others[0])
                )
    by_user = {ledger.user: ledger for ledger in ledgers}
    for probe in probes:
        _judge_probe(probe, by_user)
    for lookup in thread_lookups:
        problems = lookup.problems()
        if problems:
            evidence = (
                f"{lookup.attacker}: [thread-distinguishable] {lookup.victim}'s thread "
                f"{lookup.thread_id}: {'; '.join(problems)}"
            )
            by_user[lookup.attacker].add_violation(
                Violation(lookup.attacker, "thread-distinguishable", evidence, owner=lookup.victim)
            )
    _named(ledgers, threads)


def _named(ledgers: Sequence[UserLedger], threads: dict[str, set[str]]) -> None:
    """Runs and threads a user was told of (history, lists) that are another user's."""
    owners = {run_id: ledger.user for ledger in ledgers for run_id in ledger.run_ids()}
    for ledger in ledgers:
        for run_id, evidence in ledger.named_runs.items():
            owner = owners.get(run_id)
            if owner is not None and owner != ledger.user:
                ledger.add_violation(
                    Violation(
                        ledger.user,
                        "foreign-history",
                        f"{evidence}, a run of {owner}",
                        run_id=run_id,
                        owner=owner,
                    )
                )
        for thread, evidence in ledger.listed_threads.items():
            others = sorted(threads.get(thread, set()) - {ledger.user})
            if others:  # a thread nobody else used is this user's (a message lost in a drop)
                ledger.add_violation(
                    Violation(
                        ledger.user,
                        "foreign-history",
                        f"{evidence} (a thread of {others[:3]})",
                        owner=others[0],
                    )
                )


def _show(reply: object) -> str:
    return "no reply" if reply is None else repr(dict(reply) if isinstance(reply, dict) else reply)


def _judge_probe(probe: ProbeResult, by_user: dict[str, UserLedger]) -> None:
    if not probe.indistinguishable:
        evidence = (
            f"{probe.attacker}: [idor-distinguishable] cancel of {probe.victim}'s run "
            f"{probe.run_id} got {_show(probe.real_reply)}; cancel of the never-existing "
            f"{probe.bogus_id} got {_show(probe.bogus_reply)}"
        )
        by_user[probe.attacker].add_violation(
            Violation(
                probe.attacker,
                "idor-distinguishable",
                evidence,
                run_id=probe.run_id,
                owner=probe.victim,
            )
        )
    if by_user[probe.victim].terminal_of(probe.run_id) == "run_cancelled":
        evidence = (
            f"{probe.victim}: [idor-cancelled] run {probe.run_id} ended run_cancelled after "
            f"{probe.attacker} sent cancel for it"
        )
        by_user[probe.victim].add_violation(
            Violation(
                probe.victim, "idor-cancelled", evidence, run_id=probe.run_id, owner=probe.attacker
            )
        )


def violations_with_owners(ledgers: Sequence[UserLedger]) -> list[Violation]:
    """Every kept violation; one about another user's run names that user as owner."""
    holders: dict[str, list[str]] = {}
    for ledger in ledgers:
        for run_id in ledger.run_ids():
            holders.setdefault(run_id, []).append(ledger.user)
    out = []
    for ledger in ledgers:
        for violation in ledger.violations:
            users = holders.get(violation.run_id or "", [])
            owner = next((user for user in users if user != violation.user), None)
            if violation.owner is None and owner is not None:
                violation = attrs.evolve(
                    violation, owner=owner, evidence=f"{violation.evidence} [run of {owner}]"
                )
            out.append(violation)
    return out
