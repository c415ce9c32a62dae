"""What the users of one audit share, and the process's open-file limit."""

from __future__ import annotations

import attrs
import trio

from .._markers import request_scoped
from ._link import Link

__all__ = ["Board", "Target", "raise_fd_limit"]


@attrs.frozen
class Target:
    """A live run offered to probers: its id and its thread."""

    run_id: str
    thread_id: str | None


@request_scoped
class Board:
    """The start barrier, the runs offered to probes, and each user's open connection."""

    def __init__(self, users: int) -> None:
        self._users = users
        self._arrived = 0
        self.everyone = trio.Event()
        self._targets: dict[int, Target | None] = {}
        self._published: dict[int, trio.Event] = {}
        self.links: dict[int, Link] = {}
        if users == 0:
            self.everyone.set()

    def arrive(self) -> None:
        """A user connected (or gave up); the last one releases everybody."""
        self._arrived += 1
        if self._arrived >= self._users:
            self.everyone.set()

    def _event(self, index: int) -> trio.Event:
        return self._published.setdefault(index, trio.Event())

    def publish(self, index: int, target: Target | None) -> None:
        """Offer user ``index``'s run to its probers (None: it has none after all)."""
        if index not in self._targets:
            self._targets[index] = target
            self._event(index).set()

    async def target(self, index: int) -> Target | None:
        """User ``index``'s offered run, once it has one (or never will)."""
        await self._event(index).wait()
        return self._targets[index]


def raise_fd_limit(users: int) -> str | None:
    """Raise the soft open-file limit for ``users`` sockets (and an in-process server's).

    Returns a note saying what was done, or None when nothing was needed.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * users + 256
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:  # pragma: no cover - platform refuses
        return f"could not raise the open-file limit from {soft} to {want}: {exc}"
    return f"raised the open-file soft limit from {soft} to {want} (hard {hard})"
