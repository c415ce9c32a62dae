import functools

import trio
import trio.testing

from app.services import PassWrites


async def test_nothing_is_kept_while_it_does_not_run() -> None:
    writes = PassWrites()
    made: list[int] = []
    assert not writes.later(lambda: made.append(1))  # the caller writes at once
    async with trio.open_nursery() as nursery:
        await nursery.start(writes.run)
        nursery.cancel_scope.cancel()
    assert not writes.later(lambda: made.append(2))  # stopped
    assert made == []


async def test_the_writes_of_a_pass_are_made_together_at_the_next_pass() -> None:
    writes = PassWrites()
    made: list[str] = []
    steps: list[str] = []

    async def connection(name: str) -> None:
        assert writes.later(lambda: made.append(name))
        steps.append(f"{name} asked, made so far {len(made)}")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(writes.run)
        for name in ("a", "b", "c"):
            nursery.start_soon(connection, name)
        await trio.testing.wait_all_tasks_blocked()
        # Each asked in its own step, started in one pass: none was made within it.
        assert sorted(steps) == [f"{n} asked, made so far 0" for n in ("a", "b", "c")]
        assert sorted(made) == ["a", "b", "c"]
        assert writes.later(lambda: made.append("d"))  # the task is parked again: woken
        assert len(made) == 3
        await trio.testing.wait_all_tasks_blocked()
        assert made[-1] == "d"
        nursery.cancel_scope.cancel()


async def test_one_wake_up_serves_every_write_of_a_pass() -> None:
    writes = PassWrites()
    made: list[int] = []
    steps = 0

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            steps += task.name.endswith("PassWrites.run")

    async with trio.open_nursery() as nursery:
        await nursery.start(writes.run)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(Steps())
        for n in range(100):
            writes.later(functools.partial(made.append, n))
        await trio.testing.wait_all_tasks_blocked()
        assert (made, steps) == (list(range(100)), 1)
        nursery.cancel_scope.cancel()


async def test_a_write_asked_while_writing_waits_for_the_following_pass() -> None:
    writes = PassWrites()
    made: list[str] = []

    def first() -> None:
        made.append("first")
        writes.later(lambda: made.append("second"))

    async with trio.open_nursery() as nursery:
        await nursery.start(writes.run)
        writes.later(first)
        await trio.testing.wait_all_tasks_blocked()
        assert made == ["first", "second"]
        nursery.cancel_scope.cancel()


async def test_the_writes_still_due_are_made_when_it_stops() -> None:
    writes = PassWrites()
    made: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writes.run)
        writes.later(lambda: made.append(1))
        nursery.cancel_scope.cancel()  # before its next pass
    assert made == [1]
