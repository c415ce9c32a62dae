"""Writes put off to the scheduler's next pass, where they are made one after another.

A run's events used to be written as its agent was about to wait: one ``write(2)`` in
the middle of every run task's step. On loopback each write that finds the reader
asleep wakes it (an inter-processor interrupt on a VM), and with a step's worth of work
between two writes the reader is asleep every time: about a sixth of the server's CPU
at agent delay 2 ms. uvloop writes a loop iteration's output at its end; so does this:
a connection with frames queued asks once (:meth:`PassWrites.later`), and one task
makes every write asked for in a pass of the scheduler together, at its next pass,
while the reader is still busy with the first ones.

The events a run produces in one step still leave in one write; a frame waits at most
one pass of the scheduler. It holds only the callbacks of the connections that asked
in the current pass (never what they serve), is built by ``serve()`` with the lifecycle
and runs in the serve nursery; where it does not run, :meth:`PassWrites.later` says so
and the caller writes at once.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["PassWrites"]


class PassWrites:
    """The writes asked for in the scheduler's current pass, and the task that makes them."""

    def __init__(self) -> None:
        self._due: list[Callable[[], None]] = []
        self._task: trio.lowlevel.Task | None = None  # while run() runs
        self._parked = False  # run() waits for the first write of a pass

    def later(self, write: Callable[[], None]) -> bool:
        """Call ``write`` (which must not raise) at the scheduler's next pass; False, and
        nothing kept, while :meth:`run` is not running (the caller writes at once).
        """
        task = self._task
        if task is None:
            return False
        self._due.append(write)
        if self._parked:
            self._parked = False
            trio.lowlevel.reschedule(task)
        return True

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make the writes asked for, a pass's at a time, until cancelled.

        Cancellation: stops; the writes still due are made first, and from then on
        :meth:`later` returns False.
        """
        self._task = trio.lowlevel.current_task()
        task_status.started()
        try:
            while True:
                if not self._due:
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._abort)
                else:
                    # Asked during this pass: made at the next, all together.
                    await trio.lowlevel.checkpoint()
                due, self._due = self._due, []
                for write in due:
                    write()
        finally:
            self._task = None
            self._parked = False
            due, self._due = self._due, []
            for write in due:
                write()
