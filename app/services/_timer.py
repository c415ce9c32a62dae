"""One timer for the whole process: sleeps that wake without a cancel-scope expiry.

``trio.sleep`` arms a cancel scope per call and wakes by raising ``Cancelled`` through the
sleeping task: about 29 us of CPU per sleep, measured with 1,000 tasks sleeping 2 ms in
a loop. A :class:`Timer` keeps its sleepers by deadline and one task that wakes them with
``trio.lowlevel.reschedule``: about 7 us per sleep in the same loop. It holds only the
sleeping tasks (never what they serve), is built by ``serve()`` with the lifecycle and
runs in the serve nursery; where it does not run (a test that builds its own lifecycle),
:meth:`Timer.sleep` is plain ``trio.sleep``.

Sleepers that share a deadline share one slot: the connections' clocks wake on a grid,
so 10,000 idle connections fill a few hundred slots, and a sleep is a dict lookup and a
list append rather than a push into a heap of 10,000 (whose comparisons were a tenth of
the idle server's CPU). A sleeper whose owner moved its deadline later
(:meth:`Alarm.postpone`) is moved to the later slot when its slot comes, without a wake.

A run's deadline is a :class:`Deadline` on the timer rather than a cancel scope's: Trio
registers each change of a scope's deadline (two per run, set and cleared) in its own
heap, about 4 % of a turn whose agent waits. A :class:`Deadline` is armed and disarmed
by writing two attributes; it stays in the timer between its owner's uses (at most once,
on the connections' grid), and the timer calls its owner only if it is still armed when
its time comes.

No Trio instrument wakes them (``after_io_wait`` would spare a busy loop the timer task's
wake-ups, about 0.7 % of a waiting agent's turn): Trio disables an instrument that raises
and swallows the exception, and an exception a signal handler raises (pytest-timeout's)
would then be lost whenever it landed in the hook.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["Alarm", "Deadline", "Timer"]

_current_task: Final = trio.lowlevel.current_task


class _Sleeper:
    __slots__ = ("deadline", "interruptible", "task", "waiting")

    def __init__(self, task: trio.lowlevel.Task, deadline: float, interruptible: bool) -> None:
        self.task = task
        self.deadline = deadline
        self.waiting = True
        self.interruptible = interruptible

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.waiting = False  # cancelled: the timer skips it
        return trio.lowlevel.Abort.SUCCEEDED


class Alarm:
    """What lets a :meth:`Timer.sleep_until` sleeper's owner move its wake-up."""

    __slots__ = ("_scope", "_sleeper")

    def __init__(self) -> None:
        self._sleeper: _Sleeper | None = None
        self._scope: trio.CancelScope | None = None

    def ring(self) -> None:
        """Wake the sleeper now, if it sleeps (a deadline moved earlier)."""
        sleeper, scope = self._sleeper, self._scope
        if sleeper is not None and sleeper.waiting:
            sleeper.waiting = False
            trio.lowlevel.reschedule(sleeper.task)
        if scope is not None:
            scope.cancel()

    def postpone(self, deadline: float) -> None:
        """Let the sleeper, if it sleeps, sleep on until ``deadline`` (never earlier).

        For a wake-up that became pointless (the pong it would check for arrived): the
        sleeper wakes at ``deadline`` instead, and costs no task switch meanwhile.
        """
        sleeper, scope = self._sleeper, self._scope
        if sleeper is not None and sleeper.waiting and deadline > sleeper.deadline:
            sleeper.deadline = deadline
        if scope is not None and deadline > scope.deadline:
            scope.deadline = deadline


class Deadline:
    """A deadline its owner arms (:meth:`Timer.arm`) for each use and disarms after:
    ``expire`` is called (by the timer's task) if it is still armed when its time comes.
    """

    __slots__ = ("_expire", "_queued_at", "armed", "at")

    def __init__(self, expire: Callable[[], None]) -> None:
        self._expire = expire
        self.at = math.inf
        self.armed = False  # what its owner clears once the deadline no longer matters
        self._queued_at: float | None = None  # the timer's slot it waits in


class Timer:
    """Sleeping tasks in slots by deadline, and the one task (:meth:`run`) that wakes them."""

    def __init__(self) -> None:
        self._slots: dict[float, list[_Sleeper]] = {}
        self._deadlines: list[float] = []  # a heap of the slots' keys
        # The Deadlines' slots (dicts: one is forgotten at once when its owner ends).
        self._armed: dict[float, dict[Deadline, None]] = {}
        self._armed_at: list[float] = []  # a heap of their keys
        # The run's clock while run() runs (trio.current_time() is three calls to it).
        self._clock: trio.abc.Clock | None = None
        # The wake-up of run(): its deadline is the earliest slot's.
        self._scope: trio.CancelScope | None = None
        # That deadline, as a plain float (a scope's is a property); -inf while run() is
        # not waiting (it reads the heaps before it waits again).
        self._wake_at = -math.inf

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (Trio's clock), as ``trio.sleep`` does.

        Cancellation: as ``trio.sleep``; a cancelled sleeper is forgotten at once.
        """
        clock = self._clock
        if clock is None or not seconds > 0:  # NaN too: trio.sleep raises
            await trio.sleep(seconds)
            return
        sleeper = _Sleeper(_current_task(), clock.current_time() + seconds, False)
        self._push(sleeper)
        await trio.lowlevel.wait_task_rescheduled(sleeper.abort)

    async def sleep_until(self, deadline: float, *, unless: trio.Event, alarm: Alarm) -> None:
        """Sleep until ``deadline`` (or later, see :meth:`Alarm.postpone`), until ``unless``
        is set, or until ``alarm`` rings.

        ``unless`` must be set together with :meth:`interrupt` (the lifecycle's drain
        does both): the timer does not watch an event itself. Cancellation: as
        ``trio.sleep_until``.
        """
        if unless.is_set() or deadline <= trio.current_time():
            await trio.lowlevel.checkpoint()
        elif self._clock is None:
            with trio.CancelScope(deadline=deadline) as alarm._scope:
                await unless.wait()
            alarm._scope = None
        else:
            sleeper = alarm._sleeper = _Sleeper(_current_task(), deadline, True)
            self._push(sleeper)
            try:
                await trio.lowlevel.wait_task_rescheduled(sleeper.abort)
            finally:
                alarm._sleeper = None

    def arm(self, deadline: Deadline, at: float) -> bool:
        """Call ``deadline``'s ``expire`` at ``at`` (or a little later) unless it is
        disarmed (``deadline.armed = False``) first. False, and nothing armed, while the
        timer does not run: the caller keeps the deadline another way.

        A deadline armed again later than it was waits on in its slot and is moved to the
        later one when that slot comes (arming is the hot path, once a run).
        """
        if self._clock is None:
            return False
        deadline.at, deadline.armed = at, True
        queued = deadline._queued_at
        if queued is None or at < queued:
            deadline._queued_at = at
            self._queue(deadline)
        return True

    def forget(self, deadline: Deadline) -> None:
        """Drop ``deadline`` (disarmed: its owner is done with it), so that the timer holds
        nothing of an owner that ended."""
        deadline.armed = False
        queued, deadline._queued_at = deadline._queued_at, None
        if queued is not None:
            slot = self._armed.get(queued)
            if slot is not None:
                slot.pop(deadline, None)
                if not slot:
                    # Not kept until its time (run deadlines are minutes away): with
                    # connections coming and going, empty slots would pile up meanwhile.
                    # Its heap key stays, and is skipped when it comes.
                    del self._armed[queued]

    def _queue(self, deadline: Deadline) -> None:
        at = deadline.at
        slot = self._armed.get(at)
        if slot is not None:
            slot[deadline] = None
            return
        self._armed[at] = {deadline: None}
        heapq.heappush(self._armed_at, at)
        self._wake_earlier(at)

    def _expire_due(self, now: float) -> None:
        heap, slots = self._armed_at, self._armed
        while heap and heap[0] <= now:
            at = heapq.heappop(heap)
            for deadline in slots.pop(at, ()):
                if deadline._queued_at != at:
                    continue  # armed earlier since: it waits in an earlier slot too
                deadline._queued_at = None
                if not deadline.armed:
                    continue
                if deadline.at > at:  # armed again, for later: into its later slot
                    deadline._queued_at = deadline.at
                    self._queue(deadline)
                else:
                    deadline.armed = False
                    deadline._expire()

    def interrupt(self) -> None:
        """Wake every :meth:`sleep_until` sleeper now (their ``unless`` was just set)."""
        for slot in self._slots.values():
            for sleeper in slot:
                if sleeper.waiting and sleeper.interruptible:
                    sleeper.waiting = False
                    trio.lowlevel.reschedule(sleeper.task)

    def _push(self, sleeper: _Sleeper) -> None:
        deadline = sleeper.deadline
        slot = self._slots.get(deadline)
        if slot is not None:
            slot.append(sleeper)
            return
        self._slots[deadline] = [sleeper]
        heapq.heappush(self._deadlines, deadline)
        if deadline < self._wake_at:
            self._wake_earlier(deadline)

    def _wake_earlier(self, deadline: float) -> None:
        """Have run() wake at ``deadline`` if it waits until later."""
        if deadline < self._wake_at and self._scope is not None:
            self._wake_at = self._scope.deadline = deadline

    def _next_deadline(self) -> float:
        first = self._deadlines[0] if self._deadlines else math.inf
        armed_at, armed = self._armed_at, self._armed
        while armed_at and armed_at[0] not in armed:  # its slot was forgotten: no wake-up
            heapq.heappop(armed_at)
        return min(first, armed_at[0]) if armed_at else first

    def _wake_due(self, now: float) -> None:
        deadlines, slots = self._deadlines, self._slots
        while deadlines and deadlines[0] <= now:
            deadline = heapq.heappop(deadlines)
            for sleeper in slots.pop(deadline):
                if not sleeper.waiting:
                    continue
                if sleeper.deadline > deadline:  # postponed: into its later slot
                    self._push(sleeper)
                else:
                    sleeper.waiting = False
                    trio.lowlevel.reschedule(sleeper.task)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake sleepers as their time comes, until cancelled.

        Cancellation: stops; sleepers still waiting are woken early, so no task is left
        waiting on a timer that no longer runs. Armed deadlines are dropped unexpired.
        """
        clock = self._clock = trio.lowlevel.current_clock()
        task_status.started()
        try:
            while True:
                now = clock.current_time()
                self._wake_due(now)
                if self._armed_at and self._armed_at[0] <= now:
                    self._expire_due(now)
                self._wake_at = self._next_deadline()
                with trio.CancelScope(deadline=self._wake_at) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope, self._wake_at = None, -math.inf
        finally:
            self._clock = None
            self._scope, self._wake_at = None, -math.inf
            self._wake_due(math.inf)
            for slot in self._armed.values():
                for deadline in slot:
                    deadline._queued_at = None
                    deadline.armed = False
            self._armed.clear()
            self._armed_at.clear()
