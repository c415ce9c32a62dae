"""The end-to-end fixture itself (``tests/app/conftest.py``): how ``e2e.server``'s body ends.

The body of ``async with e2e.server() as live`` runs inside the fixture's nursery, whose
cancel scope absorbs a ``trio.Cancelled`` that reaches it once the body raised one. A
``Cancelled`` that no scope of the body's caught must not end the body early in
silence: ``test_token_attack_is_401`` once read an unassigned local after its body
ended that way (trio-websocket re-raised the ``Cancelled`` its close had caught).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import h11
import outcome
import pytest
import trio
import wsproto
import wsproto.events as wse

if TYPE_CHECKING:
    from tests.app.conftest import E2E, LiveServer


async def stray_cancelled() -> trio.Cancelled:
    """A ``Cancelled`` whose cancel scope has exited: what trio-websocket's
    ``open_websocket`` re-raises (``close_result.unwrap()``) once its nursery is gone."""
    with trio.CancelScope() as scope:
        scope.cancel()
        result = await outcome.acapture(trio.lowlevel.checkpoint)
    assert isinstance(result, outcome.Error)
    assert isinstance(result.error, trio.Cancelled)
    return result.error


async def test_a_cancelled_from_no_scope_of_the_body_is_an_error(e2e: E2E) -> None:
    stray = await stray_cancelled()
    servers: list[LiveServer] = []

    async def body_cut_short() -> None:
        async with e2e.server() as live:
            servers.append(live)
            assert (await live.get("/health")).status == 200
            raise stray

    # Without the check, the fixture's nursery absorbs ``stray``: nothing is raised.
    with pytest.raises(RuntimeError, match=r"cut short by Cancelled") as raised:
        await body_cut_short()
    assert raised.value.__cause__ is stray
    assert "serve() was running by then" in str(raised.value)
    assert servers[0].stopped.is_set()


async def test_the_tests_own_cancellation_propagates(e2e: E2E) -> None:
    with trio.move_on_after(0.2) as outer:
        async with e2e.server() as live:
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert live.stopped.is_set()


async def test_an_error_in_the_body_reads_as_itself(e2e: E2E) -> None:
    with pytest.raises(KeyError, match="the body's own"):
        async with e2e.server():
            raise KeyError("the body's own")


async def test_a_server_stopped_in_the_body_lets_the_body_run_on(e2e: E2E) -> None:
    async with e2e.server() as live:
        live.stop_now()
        await live.wait_stopped()
        ran_on = True
    assert ran_on


async def _ping_after_the_clients_close(stream: trio.SocketStream) -> None:
    """A WebSocket server that answers the client's close frame with a ping first (the
    lean server's keepalive can land there), then with its own close frame."""
    conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    async with stream:
        while data := await stream.receive_some(4096):
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, wse.Request):
                    await stream.send_all(conn.send(wse.AcceptConnection()))
                elif isinstance(event, wse.CloseConnection):
                    await stream.send_all(b"\x89\x04late")  # a ping, unmasked: the server's
                    await stream.send_all(conn.send(event.response()))
                    return


async def test_a_ping_after_the_clients_close_frame_ends_the_websocket_quietly(
    e2e: E2E,
) -> None:
    closed_quietly = False
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _ping_after_the_clients_close, 0)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            # trio-websocket's reader dies of the pong wsproto refuses while closing
            # (python-trio/trio-websocket#184); the client's close frame is out all the same.
            async with e2e.endpoint("127.0.0.1", port).websocket() as ws:
                pass
        # Checked here, not after the nursery: a stray Cancelled reaching it would be
        # absorbed by its cancel scope, and the test would pass without reaching this.
        assert ws.closed is not None
        closed_quietly = True
        nursery.cancel_scope.cancel()
    assert closed_quietly, "the websocket's exit raised a Cancelled that no scope caught"


async def test_a_cancel_of_the_websockets_own_body_still_propagates(e2e: E2E) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _ping_after_the_clients_close, 0)
        port = listeners[0].socket.getsockname()[1]
        with trio.move_on_after(0.2) as outer:
            async with e2e.endpoint("127.0.0.1", port).websocket():
                await trio.sleep_forever()
        assert outer.cancelled_caught
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"])
async def test_http_get_reads_a_close_before_the_response_as_a_reset(answer: bytes) -> None:
    """A peer that closes holding the request (a worker killed with it) is a reset
    connection, which callers already handle; a close inside a body stays h11's error."""
    from tests.app.conftest import http_get

    async def close_early(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65_536)
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, close_early, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        with trio.fail_after(5):
            if answer:
                with pytest.raises(h11.RemoteProtocolError):
                    await http_get("127.0.0.1", port, "/health")
            else:
                with pytest.raises(ConnectionResetError, match="closed before any response"):
                    await http_get("127.0.0.1", port, "/health")
        nursery.cancel_scope.cancel()
