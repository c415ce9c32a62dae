import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
import trio.testing

from app.transports.lean._poller import ReadPoller

WAIT_S = 5.0


@contextmanager
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        yield a, b


@asynccontextmanager
async def running() -> AsyncIterator[tuple[ReadPoller, trio.Nursery]]:
    poller = ReadPoller()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            yield poller, nursery
            nursery.cancel_scope.cancel()
    finally:
        poller.close()


def start_reader(nursery: trio.Nursery, poller: ReadPoller, fd: int) -> trio.Event:
    """A task waiting for ``fd`` to be readable; the event is set once it woke."""
    woken = trio.Event()

    async def reader() -> None:
        await poller.wait_readable(fd)
        woken.set()

    nursery.start_soon(reader)
    return woken


async def test_a_waiting_reader_wakes_when_its_socket_gets_news() -> None:
    with socket_pair() as (ours, peer):
        async with running() as (poller, nursery):
            poller.register(ours.fileno())
            woken = start_reader(nursery, poller, ours.fileno())
            await trio.testing.wait_all_tasks_blocked()
            assert not woken.is_set()
            peer.send(b"x")
            with trio.fail_after(WAIT_S):
                await woken.wait()
            assert os.read(ours.fileno(), 10) == b"x"


async def test_news_that_came_before_the_wait_is_not_missed() -> None:
    # Edge-triggered: one event per arrival. Bytes that arrive while nobody waits must
    # still end the next wait, else a reader could sleep on bytes already there.
    with socket_pair() as (ours, peer):
        async with running() as (poller, _):
            poller.register(ours.fileno())
            await trio.testing.wait_all_tasks_blocked()
            peer.send(b"early")
            await trio.testing.wait_all_tasks_blocked()  # the poller saw it; nobody waits
            with trio.fail_after(WAIT_S):
                await poller.wait_readable(ours.fileno())
            assert os.read(ours.fileno(), 10) == b"early"


async def test_the_end_of_input_that_came_with_the_last_bytes_is_not_missed() -> None:
    # One edge tells of both; the read that takes the bytes returns short, and the end
    # is still to be read: the wait after it must not sleep.
    with socket_pair() as (ours, peer):
        async with running() as (poller, _):
            poller.register(ours.fileno())
            peer.send(b"last")
            peer.shutdown(socket.SHUT_WR)
            await trio.testing.wait_all_tasks_blocked()  # the poller saw the one edge
            with trio.fail_after(WAIT_S):
                await poller.wait_readable(ours.fileno())
                assert os.read(ours.fileno(), 10) == b"last"
                await poller.wait_readable(ours.fileno())
                assert os.read(ours.fileno(), 10) == b""


async def test_data_there_before_registering_counts() -> None:
    with socket_pair() as (ours, peer):
        peer.send(b"first")
        async with running() as (poller, _):
            poller.register(ours.fileno())
            with trio.fail_after(WAIT_S):
                await poller.wait_readable(ours.fileno())
            assert os.read(ours.fileno(), 10) == b"first"


async def test_the_peer_leaving_wakes_the_reader() -> None:
    with socket_pair() as (ours, peer):
        async with running() as (poller, nursery):
            poller.register(ours.fileno())
            woken = start_reader(nursery, poller, ours.fileno())
            await trio.testing.wait_all_tasks_blocked()
            peer.close()
            with trio.fail_after(WAIT_S):
                await woken.wait()
            assert os.read(ours.fileno(), 10) == b""


async def test_a_cancelled_wait_is_forgotten() -> None:
    with socket_pair() as (ours, peer):
        async with running() as (poller, _):
            poller.register(ours.fileno())
            with trio.move_on_after(0.01) as waited:
                await poller.wait_readable(ours.fileno())
            assert waited.cancelled_caught
            peer.send(b"x")  # nobody waits now: remembered, not delivered to the old wait
            with trio.fail_after(WAIT_S):
                await poller.wait_readable(ours.fileno())


async def test_a_second_reader_of_one_socket_is_refused() -> None:
    with socket_pair() as (ours, _peer):
        async with running() as (poller, nursery):
            poller.register(ours.fileno())

            async def first_reader() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await poller.wait_readable(ours.fileno())

            nursery.start_soon(first_reader)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await poller.wait_readable(ours.fileno())
            poller.forget(ours.fileno())


async def test_forgetting_a_socket_wakes_its_reader_with_closed_resource_error() -> None:
    with socket_pair() as (ours, _peer):
        async with running() as (poller, nursery):
            poller.register(ours.fileno())
            raised: list[BaseException] = []

            async def reader() -> None:
                try:
                    await poller.wait_readable(ours.fileno())
                except trio.ClosedResourceError as exc:
                    raised.append(exc)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            poller.forget(ours.fileno())
            await trio.testing.wait_all_tasks_blocked()
            assert len(raised) == 1


async def test_a_reused_descriptor_starts_without_old_news() -> None:
    with socket_pair() as (ours, peer):
        async with running() as (poller, _):
            fd = ours.fileno()
            poller.register(fd)
            peer.send(b"x")
            await trio.testing.wait_all_tasks_blocked()  # remembered for fd
            poller.forget(fd)
            poller.register(fd)  # as a new connection with the same number would
            os.read(fd, 10)
            with trio.move_on_after(0.05) as waited:
                await poller.wait_readable(fd)
            assert waited.cancelled_caught


async def test_without_the_poller_running_readers_wait_on_trio() -> None:
    poller = ReadPoller()
    try:
        with socket_pair() as (ours, peer):
            poller.register(ours.fileno())
            peer.send(b"x")
            with trio.fail_after(WAIT_S):
                await poller.wait_readable(ours.fileno())
            poller.forget(ours.fileno())
    finally:
        poller.close()


async def test_stopping_the_poller_wakes_its_readers() -> None:
    with socket_pair() as (ours, _peer):
        poller = ReadPoller()
        poller.register(ours.fileno())
        try:
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as polling:
                    await polling.start(poller.run)
                    woken = start_reader(outer, poller, ours.fileno())
                    await trio.testing.wait_all_tasks_blocked()
                    polling.cancel_scope.cancel()
                with trio.fail_after(WAIT_S):
                    await woken.wait()  # woken early: its read finds nothing, it waits again
        finally:
            poller.close()
