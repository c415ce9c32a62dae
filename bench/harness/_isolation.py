"""The isolation check of every frame, on top of :class:`isolation.audit._ledger.UserLedger`.

Each simulated user carries two canaries: one in the text of every message it sends
and one in its ``thread_id``. One index maps every user's canaries to their owner, so
a frame that shows another user's canary, or a run, thread or reference this user
never had, is a violation with evidence. After the run the ids handed out are
compared across users (one ``run_id`` or ``connection_id`` given to two users).
"""

from __future__ import annotations

from collections import Counter

import attrs

from isolation.audit._checks import cross_check
from isolation.audit._ledger import CanaryIndex, CanaryOwner, UserLedger, derive_canary

__all__ = ["IsolationCheck", "UserCheck", "user_name"]

MAX_SAMPLES = 20


@attrs.define
class UserCheck:
    """One user's ledger, fed now or -- ``deferred`` -- replayed in order at the end.

    Deferred, the load generator only appends to a list while it measures; the
    ledger judges every frame afterwards, in the same order, with the same result,
    and its CPU does not count against the client inside the window.
    """

    user: str
    canary: str
    thread_id: str
    ledger: UserLedger
    deferred: bool = True
    log: list[str | tuple[str, ...]] = attrs.field(factory=list)

    def begin(self) -> None:
        if self.deferred:
            self.log.append(("begin",))
        else:
            self.ledger.begin_connection()

    def sent(self, client_id: str, text: str) -> None:
        if self.deferred:
            self.log.append(("sent", client_id, text))
        else:
            self.ledger.sent_message(client_id=client_id, text=text, thread_id=self.thread_id)

    def frame(self, text: str) -> None:
        if self.deferred:
            self.log.append(text)
        else:
            self.ledger.observe(text)

    def end(self, *, lost: bool) -> None:
        if self.deferred:
            self.log.append(("end", "lost" if lost else ""))
        else:
            self.ledger.end_connection(lost=lost)

    def replay(self) -> None:
        """Feed the ledger what was logged (idempotent: the log is consumed)."""
        log, self.log = self.log, []
        ledger = self.ledger
        for item in log:
            if isinstance(item, str):
                ledger.observe(item)
            elif item[0] == "sent":
                ledger.sent_message(client_id=item[1], text=item[2], thread_id=self.thread_id)
            elif item[0] == "begin":
                ledger.begin_connection()
            else:
                ledger.end_connection(lost=item[1] == "lost")


def user_name(index: int) -> str:
    """The ``sub`` of simulated user ``index`` (0-based)."""
    return f"u{index:05d}"


def _user(seed: str, index: int) -> tuple[str, str, str]:
    user = user_name(index)
    return user, derive_canary(seed, "user", user), derive_canary(seed, "thread", user)


class IsolationCheck:
    """The ledgers of one load generator's users, sharing one index of all users."""

    def __init__(self, seed: str, total_users: int, *, deferred: bool = True) -> None:
        self._seed = seed
        self._deferred = deferred
        entries: list[tuple[str, CanaryOwner]] = []
        for index in range(total_users):
            user, canary, thread = _user(seed, index)
            entries.append((canary, CanaryOwner(user, "user")))
            entries.append((thread, CanaryOwner(user, "thread")))
        self._index = CanaryIndex.build(entries)
        self._checks: list[UserCheck] = []
        self._finished = False

    def user(self, index: int) -> UserCheck:
        user, canary, thread = _user(self._seed, index)
        ledger = UserLedger(user, self._index)
        check = UserCheck(user, canary, f"t-{thread}", ledger, deferred=self._deferred)
        self._checks.append(check)
        return check

    def finish(self) -> None:
        """End what is still open and run the cross-user checks; idempotent."""
        if self._finished:
            return
        self._finished = True
        for check in self._checks:
            check.replay()
        ledgers = [c.ledger for c in self._checks]
        for ledger in ledgers:
            ledger.finish(True)
        cross_check(ledgers, ())

    @property
    def violation_count(self) -> int:
        return sum(c.ledger.violation_count for c in self._checks)

    def samples(self) -> tuple[str, ...]:
        out: list[str] = []
        for check in self._checks:
            for violation in check.ledger.violations:
                out.append(violation.evidence)
                if len(out) >= MAX_SAMPLES:
                    return tuple(out)
        return tuple(out)

    def anomalies(self) -> Counter[str]:
        """Anomaly kinds among those kept (at most 200 per user)."""
        return Counter(a.kind for c in self._checks for a in c.ledger.anomalies)
