"""Per-user admission: how fast one ``sub`` may open connections, how many it may hold open,
and a cool-down after abuse.

A connection's own limits (rate, runs, size) end with the connection; without this,
a client that is closed for flooding reconnects at once with a fresh budget, and one
token opening hundreds of connections a second (or holding thousands open) costs every
other user.

:class:`Admission` is what the handshake awaits; two implementations:

- :class:`MemoryAdmission` (here): one process's counters, no I/O. Right for one
  process; with N processes behind a balancer every limit is N times too generous and
  a cooling-down user just reconnects to another one.
- :class:`~app.services._admission_redis.RedisAdmission`: the same limits shared by
  every process through one Redis.

:class:`SubjectGuard` is the I/O-free core of the memory one (the caller passes ``now``,
any monotonic clock in seconds). It holds counters keyed by user id and nothing else:
no connection, no message, nothing one user could reach another by. Its size is
bounded; the least recently seen user is forgotten first, which only ever errs towards
admitting.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from ..core._state import TokenBucket
from ._settings import Settings

__all__ = [
    "MAX_SUBJECTS",
    "Admission",
    "AdmissionLimits",
    "MemoryAdmission",
    "Refusal",
    "Refused",
    "SubjectGuard",
    "Ticket",
]

#: Users remembered at once (a few hundred bytes each: at most about 25 MiB).
MAX_SUBJECTS: Final = 65_536


class Refusal(enum.Enum):
    """Why a user's handshake is refused; the value is its ``reason`` in the metrics."""

    TOO_FAST = "rate"  # opening connections faster than the connect budget
    COOLING_DOWN = "cooldown"  # closed for abuse recently
    TOO_MANY_OPEN = "user_connections"  # holds --max-connections-per-user already
    UNAVAILABLE = "admission"  # the shared counters cannot be reached (Redis down)


@attrs.frozen
class Refused:
    """A handshake refused for its user: seconds until a retry can succeed, and why."""

    retry_after_s: float
    reason: Refusal

    @property
    def cooling_down(self) -> bool:
        return self.reason is Refusal.COOLING_DOWN


@attrs.frozen
class Ticket:
    """One admitted connection's place in its user's count; hand it back to ``release``."""

    subject: str
    connection_id: str = ""  # names the connection in shared counters ("" in memory)


@attrs.frozen
class AdmissionLimits:
    """The per-user limits; a value ``<= 0`` turns its limit off."""

    connect_rate_per_s: float = 0.0
    connect_burst: int = 1
    abuse_cooldown_s: float = 0.0
    max_open: int = 0
    #: Retry-After for a refusal whose end nobody can know (a connection must close first).
    retry_after_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionLimits:
        return cls(
            connect_rate_per_s=settings.connect_rate_per_s,
            connect_burst=settings.connect_burst,
            abuse_cooldown_s=settings.abuse_cooldown_s,
            max_open=settings.max_connections_per_user,
            retry_after_s=settings.retry_after_s,
        )


class Admission(Protocol):
    """Per-user admission of WebSocket handshakes, after the token is verified.

    The order of checks: cool-down, open connections, connect budget; a refused
    handshake takes nothing from the budget and holds no place in the count.
    """

    async def admit(self, subject: str) -> Ticket | Refused:
        """Count one more connection of ``subject``, or why not.

        A :class:`Ticket` must be given back to :meth:`release` once the connection
        ends, however it ends. Cancellation: nothing was counted, or the count is
        released by itself (shared counters: after their lease).
        """
        ...

    async def release(self, ticket: Ticket) -> None:
        """The connection of ``ticket`` ended. Bounded; never raises for an
        unreachable store. Cancellation: the count is still released (shared counters:
        at once in this process, after their lease everywhere)."""
        ...

    def penalize(self, subject: str) -> None:
        """Start ``subject``'s abuse cool-down (a close 1008 ``rate_limited``).

        Returns at once: the session calls it from synchronous code.
        """
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """What the admission does in the background (shared counters: their upkeep);
        runs until cancelled, which is how it stops."""
        ...


@attrs.define
class _Entry:
    bucket: TokenBucket
    banned_until: float = -math.inf


@attrs.define
class SubjectGuard:
    """Per-user connect budget (token bucket) and abuse cool-down.

    ``rate_per_s <= 0`` turns the connect budget off; ``cooldown_s <= 0`` the
    cool-down.
    """

    rate_per_s: float
    burst: int
    cooldown_s: float
    max_subjects: int = MAX_SUBJECTS
    _entries: OrderedDict[str, _Entry] = attrs.field(factory=OrderedDict, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, subject: str, now: float) -> Refused | None:
        """Take one connection from ``subject``'s budget; None when admitted."""
        if self.rate_per_s <= 0 and subject not in self._entries:
            return None  # nothing to check, nothing worth remembering
        refused = self.cooling_down(subject, now)
        if refused is not None:
            return refused
        entry = self._entry(subject)
        if self.rate_per_s <= 0 or entry.bucket.take(now):
            return None
        return Refused((1.0 - entry.bucket.tokens) / self.rate_per_s, Refusal.TOO_FAST)

    def cooling_down(self, subject: str, now: float) -> Refused | None:
        """The refusal if ``subject`` is cooling down at ``now``; takes nothing."""
        entry = self._entries.get(subject)
        if entry is None or now >= entry.banned_until:
            return None
        self._entries.move_to_end(subject)
        return Refused(entry.banned_until - now, Refusal.COOLING_DOWN)

    def penalize(self, subject: str, now: float) -> None:
        """Refuse ``subject``'s connections for ``cooldown_s`` from ``now`` (an abuse close)."""
        if self.cooldown_s <= 0:
            return
        entry = self._entry(subject)
        entry.banned_until = max(entry.banned_until, now + self.cooldown_s)

    def _entry(self, subject: str) -> _Entry:
        """``subject``'s entry, now the most recently seen; a new one if forgotten."""
        entry = self._entries.get(subject)
        if entry is not None:
            self._entries.move_to_end(subject)
            return entry
        entry = self._entries[subject] = _Entry(TokenBucket(self.rate_per_s, self.burst))
        while len(self._entries) > self.max_subjects:
            self._entries.popitem(last=False)
        return entry


@attrs.define
class MemoryAdmission:
    """:class:`Admission` in this process's memory: right for one server process.

    Time is ``clock()`` (default: Trio's, so tests may jump it). The open-connection
    count holds one entry per user with a connection open, so it is bounded by the
    server's ``--max-connections``.
    """

    limits: AdmissionLimits = attrs.field(factory=AdmissionLimits)
    clock: Callable[[], float] = trio.current_time
    _guard: SubjectGuard = attrs.field(init=False)
    _open: dict[str, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        limits = self.limits
        self._guard = SubjectGuard(
            limits.connect_rate_per_s, limits.connect_burst, limits.abuse_cooldown_s
        )

    def open_count(self, subject: str) -> int:
        """How many connections ``subject`` holds open in this process."""
        return self._open.get(subject, 0)

    async def admit(self, subject: str) -> Ticket | Refused:
        """See :meth:`Admission.admit`. Never waits (a refused flood costs no trip through
        the scheduler); cancelled before it counts or not at all."""
        await trio.lowlevel.checkpoint_if_cancelled()
        now = self.clock()
        refused = self._guard.cooling_down(subject, now)
        if refused is not None:
            return refused
        held = self._open.get(subject, 0)
        if 0 < self.limits.max_open <= held:
            return Refused(self.limits.retry_after_s, Refusal.TOO_MANY_OPEN)
        refused = self._guard.admit(subject, now)
        if refused is not None:
            return refused
        self._open[subject] = held + 1
        return Ticket(subject)

    async def release(self, ticket: Ticket) -> None:
        """See :meth:`Admission.release`. No checkpoint: safe in a cancelled ``finally``."""
        held = self._open.get(ticket.subject, 0) - 1
        if held > 0:
            self._open[ticket.subject] = held
        else:
            self._open.pop(ticket.subject, None)

    def penalize(self, subject: str) -> None:
        """See :meth:`Admission.penalize`: applied at once."""
        self._guard.penalize(subject, self.clock())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to keep up: waits until cancelled."""
        task_status.started()
        await trio.sleep_forever()
