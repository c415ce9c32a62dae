"""The end-to-end fixture itself (``tests/app/conftest.py``): how ``e2e.server``'s body ends.

The body of ``async with e2e.server() as live`` runs inside the fixture's nursery, whose
cancel scope absorbs a ``trio.Cancelled`` that reaches it once the body raised one. A
``Cancelled`` that no scope of the body's caught must not end the body early in
silence: ``test_token_attack_is_401`` once read an unassigned local after its body
ended that way (trio-websocket re-raised the ``Cancelled`` its close had caught).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import outcome
import pytest
import trio

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
