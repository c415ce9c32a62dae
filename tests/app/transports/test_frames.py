import math

import pytest
import trio
import trio.testing

from app.session import SendTimeout, TransportClosed
from app.transports._frames import CLOSE_FLUSH_S, FrameQueue


class GatedQueue(FrameQueue):
    """Writes wait for ``gate``; each write is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()
        self.written: list[bytes] = []
        self.fail = False

    async def _write(self, frame: bytes) -> None:
        await self.gate.wait()
        if self.fail:
            raise TransportClosed
        self.written.append(frame)


async def test_frames_are_written_in_order_by_whoever_writes() -> None:
    queue = GatedQueue()
    queue.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.send, (b"a", b"b"), math.inf)
        await trio.testing.wait_all_tasks_blocked()
        queue.queue((b"c",))  # queued behind the blocked write
        assert queue.write_now()  # ... and a writer is at work: nothing is left for us
        assert queue.backlog() == 3
        queue.gate.set()
    assert queue.written == [b"a", b"b", b"c"]
    assert queue.backlog() == 0
    assert queue.write_now()


async def test_a_queue_nobody_writes_asks_for_a_flush() -> None:
    queue = GatedQueue()
    queue.queue((b"x",))
    assert not queue.write_now()  # frames wait and no task writes them
    await queue.flush(math.inf)
    assert queue.written == [b"x"]


async def test_past_the_deadline_is_a_slow_consumer(autojump_clock: trio.testing.MockClock) -> None:
    queue = GatedQueue()
    queue.gate = trio.Event()
    with pytest.raises(SendTimeout):
        await queue.send((b"x",), trio.current_time() + 1)
    queue.gate.set()
    await queue.flush(math.inf)  # the frame stayed queued, whole
    assert queue.written == [b"x"]


async def test_a_failed_write_breaks_the_queue() -> None:
    queue = GatedQueue()
    queue.fail = True
    with pytest.raises(TransportClosed):
        await queue.send((b"x",), math.inf)
    assert queue.broken
    assert queue.write_now()
    with pytest.raises(TransportClosed):
        queue.queue((b"y",))


async def test_the_close_waits_only_while_the_peer_takes_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = GatedQueue()
    queue.queue((b"a", b"b"))
    await queue.flush_before_close()
    assert queue.written == [b"a", b"b"]
    queue.gate = trio.Event()
    queue.queue((b"c",))
    start = trio.current_time()
    await queue.flush_before_close()  # the peer takes nothing: give up after CLOSE_FLUSH_S
    assert trio.current_time() - start == pytest.approx(CLOSE_FLUSH_S)
