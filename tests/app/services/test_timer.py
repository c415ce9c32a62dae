import contextlib
import math
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from app.services import Alarm, Deadline, Timer


async def test_sleepers_wake_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    timer = Timer()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await timer.sleep(seconds)
        woke.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        start = trio.current_time()
        for name, seconds in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)):
            nursery.start_soon(sleeper, name, seconds)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [t - start for _, t in woke] == [1.0, 1.0, 2.0, 3.0]  # in order of their time
    assert {n: t - start for n, t in woke} == {"a": 1.0, "a2": 1.0, "b": 2.0, "c": 3.0}


async def test_a_later_sleeper_does_not_delay_an_earlier_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        nursery.start_soon(timer.sleep, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await timer.sleep(0.5)  # earlier than the timer's current wake-up
        assert trio.current_time() - start == pytest.approx(0.5)
        nursery.cancel_scope.cancel()


async def test_a_cancelled_sleeper_is_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    timer = Timer()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        with trio.move_on_after(1) as scope:
            await timer.sleep(10)
        assert scope.cancelled_caught
        await timer.sleep(20)  # the forgotten entry is skipped when its time comes
        nursery.cancel_scope.cancel()


async def test_without_a_running_timer_sleep_is_trio_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    start = trio.current_time()
    await timer.sleep(2)
    await timer.sleep(0)
    with pytest.raises(ValueError, match="NaN"):
        await timer.sleep(math.nan)
    assert trio.current_time() - start == pytest.approx(2)


@pytest.mark.parametrize("running", [True, False])
async def test_sleep_until_ends_at_the_deadline_the_event_or_the_alarm(
    autojump_clock: trio.testing.MockClock, running: bool
) -> None:
    timer = Timer()
    event, alarm = trio.Event(), Alarm()
    async with trio.open_nursery() as nursery:
        if running:
            await nursery.start(timer.run)
        start = trio.current_time()
        await timer.sleep_until(start + 3, unless=event, alarm=alarm)
        assert trio.current_time() - start == pytest.approx(3)

        async def ring_then_interrupt() -> None:
            await trio.sleep(1)
            alarm.ring()
            await trio.sleep(1)
            event.set()
            timer.interrupt()

        nursery.start_soon(ring_then_interrupt)
        start = trio.current_time()
        await timer.sleep_until(start + 100, unless=event, alarm=alarm)
        assert trio.current_time() - start == pytest.approx(1)  # the alarm rang
        await timer.sleep_until(start + 100, unless=event, alarm=alarm)
        assert trio.current_time() - start == pytest.approx(2)  # the event, with interrupt()
        await timer.sleep_until(start + 100, unless=event, alarm=alarm)  # already set
        assert trio.current_time() - start == pytest.approx(2)
        nursery.cancel_scope.cancel()


async def test_interrupt_leaves_plain_sleepers_asleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        start = trio.current_time()

        async def interrupt_soon() -> None:
            await trio.sleep(1)
            timer.interrupt()

        nursery.start_soon(interrupt_soon)
        await timer.sleep(5)
        assert trio.current_time() - start == pytest.approx(5)
        nursery.cancel_scope.cancel()


async def test_stopping_the_timer_wakes_whoever_still_sleeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    woke = trio.Event()

    async def sleeper() -> None:
        await timer.sleep(1_000)
        woke.set()

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as inner:
            await inner.start(timer.run)
            outer.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()
        with trio.fail_after(1):
            await woke.wait()


@pytest.mark.parametrize("running", [True, False])
async def test_a_postponed_sleeper_wakes_at_its_later_deadline_only(
    autojump_clock: trio.testing.MockClock, running: bool
) -> None:
    timer = Timer()
    alarm = Alarm()
    woke: list[float] = []
    steps: list[trio.lowlevel.Task] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps.append(task)

    async def sleeper() -> None:
        await timer.sleep_until(trio.current_time() + 1, unless=trio.Event(), alarm=alarm)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        if running:
            await nursery.start(timer.run)
        start = trio.current_time()
        nursery.start_soon(sleeper, name="sleeper")
        await trio.testing.wait_all_tasks_blocked()
        alarm.postpone(start + 5)
        alarm.postpone(start + 3)  # never earlier
        trio.lowlevel.add_instrument(Steps())
        await trio.sleep(6)
        nursery.cancel_scope.cancel()
    assert [t - start for t in woke] == [5.0]
    assert [t.name for t in steps].count("sleeper") == 1  # not woken at 1 nor at 3


async def test_sleepers_of_one_deadline_share_it_and_wake_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline, unless=trio.Event(), alarm=Alarm())
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        start = trio.current_time()
        for _ in range(100):
            nursery.start_soon(sleeper, start + 2)
        nursery.start_soon(sleeper, start + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(timer._deadlines) == 2  # two slots for 101 sleepers
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert [t - start for t in woke] == [1.0] + [2.0] * 100


@contextlib.asynccontextmanager
async def running_timer() -> AsyncIterator[tuple[Timer, Deadline, list[float], float]]:
    """A running timer, a deadline that notes when it expires (relative to the start),
    and those notes."""
    timer = Timer()
    expired: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        start = trio.current_time()
        deadline = Deadline(lambda: expired.append(trio.current_time() - start))
        yield timer, deadline, expired, start
        nursery.cancel_scope.cancel()


async def test_an_armed_deadline_expires_at_its_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_timer() as (timer, deadline, expired, start):
        assert timer.arm(deadline, start + 2)
        await trio.sleep(3)
    assert expired == [2.0]
    assert not deadline.armed


async def test_a_disarmed_deadline_never_expires(autojump_clock: trio.testing.MockClock) -> None:
    async with running_timer() as (timer, deadline, expired, start):
        assert timer.arm(deadline, start + 1)
        deadline.armed = False
        await trio.sleep(2)
        assert timer._armed == {}  # dropped when its slot came
    assert expired == []


async def test_a_deadline_armed_again_waits_in_one_slot_then_moves_to_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_timer() as (timer, deadline, expired, start):
        for at in (5, 6, 7):  # one run after another on the same task
            assert timer.arm(deadline, start + at)
            deadline.armed = False
        assert timer.arm(deadline, start + 8)
        assert sum(map(len, timer._armed.values())) == 1  # queued once, at 5
        await trio.sleep(7)
        assert expired == []  # at 5 it moved on to 8
        assert list(timer._armed) == [start + 8]
        await trio.sleep(2)
    assert expired == [8.0]


async def test_a_deadline_armed_earlier_expires_at_the_earlier_time_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_timer() as (timer, deadline, expired, start):
        assert timer.arm(deadline, start + 100)
        assert timer.arm(deadline, start + 1)  # earlier than the slot it waits in
        await trio.sleep(200)
    assert expired == [1.0]


async def test_deadlines_share_slots_and_a_stopped_timer_drops_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    expired: list[int] = []
    deadlines = [Deadline(lambda i=i: expired.append(i)) for i in range(50)]  # type: ignore[misc]
    assert not timer.arm(deadlines[0], trio.current_time() + 1)  # not running: not armed
    assert not deadlines[0].armed
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        at = trio.current_time() + 10
        for deadline in deadlines:
            assert timer.arm(deadline, at)
        assert len(timer._armed_at) == 1  # one slot for all of them
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert expired == []  # the timer stopped first: none expired
    assert not any(deadline.armed for deadline in deadlines)
    assert timer._armed == {}


async def test_a_forgotten_deadline_leaves_nothing_in_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    expired: list[int] = []
    kept, dropped = Deadline(lambda: expired.append(1)), Deadline(lambda: expired.append(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        at = trio.current_time() + 1
        assert timer.arm(kept, at)
        assert timer.arm(dropped, at)
        timer.forget(dropped)
        timer.forget(dropped)  # twice, or never armed: nothing to do
        timer.forget(Deadline(lambda: None))
        assert list(timer._armed[at]) == [kept]  # nothing of the forgotten one's owner
        assert not dropped.armed
        await trio.sleep(2)
        later = trio.current_time() + 100
        assert timer.arm(dropped, later)
        timer.forget(dropped)
        assert timer._armed == {}  # an emptied slot is not kept until its time
        assert timer._next_deadline() == math.inf  # nor its wake-up
        nursery.cancel_scope.cancel()
    assert expired == [1]
