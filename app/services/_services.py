"""What the whole process shares: immutable services and the server's lifecycle.

Both are built by ``serve()`` (or a test) and passed down explicitly; nothing
here exists at import time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import attrs
import trio

from ..agents._agent import Agent
from ..auth._tokens import TokenVerifier
from ..threads._logs import ThreadLogs
from ._admission import Admission, MemoryAdmission
from ._metrics import Metrics
from ._settings import Settings
from ._timer import Timer
from ._writes import PassWrites

__all__ = ["ServerLifecycle", "Services"]


@attrs.frozen
class Services:
    """Stateless services every connection uses; immutable and safe to share."""

    settings: Settings
    verifier: TokenVerifier
    agent: Agent
    log: logging.Logger
    wall_clock: Callable[[], float] = time.time


@attrs.define
class ServerLifecycle:
    """Admission, draining and metrics for one running server.

    Holds a count, per-user counters (``admission``) and the process's metrics, never
    the connections themselves: there is no registry to reach another user through.
    """

    max_connections: int
    #: Per-user limits (connect budget, open connections, cool-down). Default: in
    #: memory, every limit off; ``serve()`` builds it from the settings and the store.
    admission: Admission = attrs.field(factory=MemoryAdmission)
    draining: trio.Event = attrs.field(factory=trio.Event)
    grace_deadline: float = math.inf
    open_connections: int = 0
    #: Wakes sleeping runs (``RunContext.sleep``); ``serve()`` runs it.
    timer: Timer = attrs.field(factory=Timer)
    #: Makes the runs' writes at the scheduler's next pass, together; ``serve()`` runs it.
    writes: PassWrites = attrs.field(factory=PassWrites)
    #: Every thread's log; ``serve()`` runs its writer. Default: in memory.
    threads: ThreadLogs = attrs.field(factory=ThreadLogs.in_memory)
    #: The process's counters and the registry ``/metrics`` renders (no user data).
    metrics: Metrics = attrs.field(factory=Metrics)
    _idle: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    def try_admit(self) -> bool:
        """Count one more connection unless draining or full."""
        if self.draining.is_set() or self.open_connections >= self.max_connections:
            return False
        self.open_connections += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    def release(self) -> None:
        self.open_connections -= 1
        if self.open_connections == 0:
            self._idle.set()

    def begin_drain(self, grace_s: float) -> None:
        """Stop admitting; give in-flight runs until ``grace_s`` from now."""
        if not self.draining.is_set():
            self.grace_deadline = trio.current_time() + grace_s
            self.draining.set()
            self.timer.interrupt()  # the connections' clocks sleep there

    async def wait_all_closed(self) -> None:
        """Return once no connection is open. Cancellation: just stops waiting."""
        await self._idle.wait()
