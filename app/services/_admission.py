"""Per-user admission: how fast one ``sub`` may open connections, and a cool-down after abuse.

A connection's own limits (rate, runs, size) end with the connection; without this,
a client that is closed for flooding reconnects at once with a fresh budget, and one
token opening hundreds of connections a second costs every other user. No I/O: the
caller passes ``now`` (any monotonic clock, seconds).

One guard per running server, built by ``serve()`` and reached through its
:class:`~app.services._services.ServerLifecycle`. It holds counters keyed by user id and
nothing else: no connection, no message, nothing one user could reach another by.
Its size is bounded; the least recently seen user is forgotten first, which only
ever errs towards admitting.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

import attrs

from ..core._state import TokenBucket

__all__ = ["MAX_SUBJECTS", "Refused", "SubjectGuard"]

#: Users remembered at once (a few hundred bytes each: at most about 25 MiB).
MAX_SUBJECTS: Final = 65_536


@attrs.frozen
class Refused:
    """A handshake refused for its user: seconds until a retry can succeed, and why."""

    retry_after_s: float
    cooling_down: bool  # closed for abuse recently; otherwise opening too fast


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
        entry = self._entry(subject)
        if now < entry.banned_until:
            return Refused(entry.banned_until - now, cooling_down=True)
        if self.rate_per_s <= 0 or entry.bucket.take(now):
            return None
        return Refused((1.0 - entry.bucket.tokens) / self.rate_per_s, cooling_down=False)

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
