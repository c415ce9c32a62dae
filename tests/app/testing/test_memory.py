import math

import pytest
import trio

from app import (
    PeerClosed,
    SendTimeout,
    TransportClosed,
    UnsupportedFrame,
    memory_transport_pair,
)


async def test_frames_both_ways() -> None:
    transport, client = memory_transport_pair()
    await client.send_json({"type": "ping"})
    assert await transport.receive() == '{"type": "ping"}'
    await transport.send((b'{"type":"pong"}',), math.inf)
    assert await client.receive_json() == {"type": "pong"}


async def test_binary_is_unsupported() -> None:
    transport, client = memory_transport_pair()
    await client.send_binary(b"x")
    with pytest.raises(UnsupportedFrame):
        await transport.receive()


async def test_close_reaches_client_after_queued_frames() -> None:
    transport, client = memory_transport_pair()
    await transport.send((b"a",), math.inf)
    await transport.close(1000, "bye")
    await transport.close(1011, "ignored")  # idempotent
    assert await client.receive() == "a"
    with pytest.raises(PeerClosed) as info:
        await client.receive()
    assert (info.value.code, info.value.reason) == (1000, "bye")
    with pytest.raises(PeerClosed):
        await client.receive()
    with pytest.raises(TransportClosed):
        await transport.send((b"late",), math.inf)


async def test_close_when_client_buffer_full() -> None:
    transport, client = memory_transport_pair(client_buffer=0)
    await transport.close(1008, "slow_consumer")
    with pytest.raises(PeerClosed) as info:
        await client.receive()
    assert info.value.code == 1008


async def test_disconnect_is_seen_by_server() -> None:
    transport, client = memory_transport_pair()
    await client.disconnect()
    with pytest.raises(TransportClosed):
        await transport.receive()
    with pytest.raises(TransportClosed):
        await transport.send((b"x",), math.inf)
    with pytest.raises(TransportClosed):
        transport.ping(lambda: None)


async def test_unresponsive_client_never_pongs() -> None:
    transport, client = memory_transport_pair()
    pongs: list[int] = []
    transport.ping(lambda: pongs.append(1))
    assert pongs == [1]
    client.responsive = False
    assert not client.responsive
    transport.ping(lambda: pongs.append(2))
    assert pongs == [1]


async def test_a_write_past_its_deadline_is_a_slow_consumer() -> None:
    transport, client = memory_transport_pair(client_buffer=0)
    with pytest.raises(SendTimeout):
        await transport.send((b"unread",), trio.current_time() + 0.01)
    del client
