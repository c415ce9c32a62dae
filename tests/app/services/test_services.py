import trio
import trio.testing

from app import ServerLifecycle


async def test_admission_counts_and_limits() -> None:
    life = ServerLifecycle(max_connections=2)
    assert life.try_admit()
    assert life.try_admit()
    assert not life.try_admit()
    life.release()
    assert life.try_admit()
    assert life.open_connections == 2


async def test_draining_refuses_and_sets_grace(autojump_clock: trio.testing.MockClock) -> None:
    life = ServerLifecycle(max_connections=5)
    life.begin_drain(grace_s=10)
    assert life.draining.is_set()
    assert life.grace_deadline == trio.current_time() + 10
    first_deadline = life.grace_deadline
    await trio.sleep(1)
    life.begin_drain(grace_s=10)  # a second call does not extend the grace
    assert life.grace_deadline == first_deadline
    assert not life.try_admit()


async def test_wait_all_closed() -> None:
    life = ServerLifecycle(max_connections=5)
    with trio.fail_after(1):
        await life.wait_all_closed()  # nothing open
    assert life.try_admit()
    closed = trio.Event()

    async def waiter() -> None:
        await life.wait_all_closed()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()
        life.release()
    assert closed.is_set()
