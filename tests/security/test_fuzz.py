"""Fuzz targets: the protocol core with arbitrary input, and real servers with arbitrary frames.

(a) ``parse_client_message`` and :class:`ConnectionState` are fed arbitrary text and
JSON-ish values: parsing never raises, the state machine answers every frame with
documented actions only, and ``prepare``/``commit`` raise nothing but
:class:`EventRefused`.

(b) Arbitrary frame sequences (and raw bytes) are written after a valid handshake to a
real server of each transport. The server never closes 1011, never logs an error, never
stops, and leaks no connection; a fresh client completes a chat turn afterwards.

Example counts keep ``make test`` fast; ``ENCLAVE_FUZZ_EXAMPLES=N`` (or
``ENCLAVE_HOSTILE_LONG=1`` for 500) runs longer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio
import wsproto.events as wse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from wsproto.connection import Connection, ConnectionType

from app import AgentThinking, RunningServer, build_services, serve
from app.core._codes import CloseCode, CloseReason, ErrorCode
from app.core._events import AgentCompleted, ErrorEvent, Pong
from app.core._messages import ClientMessage, ProtocolError, parse_client_message
from app.core._state import (
    Close,
    ConnectionState,
    EventRefused,
    Reauthenticate,
    Reply,
    RunLimits,
    StartRun,
    StopRun,
)
from app.testing._schema import validate_server_event

if TYPE_CHECKING:
    from tests.security.conftest import E2E, Endpoint, Hostile

LONG: Final = bool(os.environ.get("ENCLAVE_HOSTILE_LONG"))
EXAMPLES: Final = int(os.environ.get("ENCLAVE_FUZZ_EXAMPLES", "500" if LONG else "40"))
CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009})
# About 0.1 s per example and test on a loaded 2-core machine, over the default limit.
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 2)

# -- (a) the protocol core ----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["user_message", "cancel", "ping", "auth", "run_1", "c1", "type"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "text", "thread_id", "client_id", "run_id", "token"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def nest(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


#: Text a client could send: anything at all, JSON of any shape, deep nesting,
#: huge numbers, truncated or doubled JSON.
jsonish_text = st.one_of(
    st.text(max_size=200),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    json_values.map(json.dumps),
    st.builds(
        lambda d, inner: '{"type": "ping", "x": ' + nest(d, inner) + "}",
        st.integers(0, 3_000),
        st.sampled_from(['"é"', '"\\ud800"', "1e400", "9" * 5_000, "{}", ""]),
    ),
    st.builds(lambda s, cut: s[:cut], json_values.map(json.dumps), st.integers(0, 50)),
    st.builds(lambda s: s + s, json_values.map(json.dumps)),
)


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(jsonish_text)
def test_parse_client_message_never_raises(text: str) -> None:
    result = parse_client_message(text)
    if isinstance(result, ProtocolError):
        assert result.code in ErrorCode
        assert 0 < len(result.message) <= 200
    else:
        assert isinstance(result, ClientMessage)


#: The only closes the state machine may decide for a client's frame.
DOCUMENTED_CLOSES: Final = {
    (CloseCode.MESSAGE_TOO_BIG, CloseReason.MESSAGE_TOO_BIG),
    (CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED),
}


class ConnectionStateMachine(RuleBasedStateMachine):
    """One connection's state machine under arbitrary frames, clock steps and events."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ConnectionState(
            RunLimits(max_runs=2, max_message_bytes=4096, rate_per_s=5, rate_burst=8)
        )
        self.now = 0.0
        self.runs: set[str] = set()
        self.closed = False

    @rule(text=jsonish_text, step=st.floats(0, 2))
    def frame(self, text: str, step: float) -> None:
        self.now += step
        actions = self.state.receive_text(text, self.now)
        assert len(actions) == 1
        action = actions[0]
        if isinstance(action, Reply):
            assert isinstance(action.event, ErrorEvent | Pong)
            if isinstance(action.event, ErrorEvent):
                assert action.event.code in {code.value for code in ErrorCode}
        elif isinstance(action, StartRun):
            assert action.run_id not in self.runs
            self.runs.add(action.run_id)
        elif isinstance(action, StopRun):
            assert action.run_id in self.runs
        elif isinstance(action, Close):
            assert (action.code, action.reason) in DOCUMENTED_CLOSES
        else:
            assert isinstance(action, Reauthenticate)

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data(), terminal=st.booleans())
    def emit(self, data: st.DataObject, terminal: bool) -> None:
        run_id = data.draw(st.sampled_from(sorted(self.runs)))
        payload = AgentCompleted(result=None) if terminal else AgentThinking(thought="t")
        _, seq = self.state.next_event(run_id, payload)
        self.state.advance(run_id, seq, payload)
        if terminal:
            self.runs.discard(run_id)

    @rule(run_id=st.text(max_size=20) | st.just("run_x"), terminal=st.booleans())
    def emit_for_a_run_it_does_not_have(self, run_id: str, terminal: bool) -> None:
        if run_id in self.runs:
            return
        payload = AgentCompleted(result=None) if terminal else AgentThinking(thought="t")
        with pytest.raises(EventRefused):
            self.state.next_event(run_id, payload)

    @invariant()
    def runs_are_bounded_and_known(self) -> None:
        assert self.state.active_runs == self.runs
        assert len(self.runs) <= 2


ConnectionStateMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=30, deadline=None
)
TestConnectionStateMachine = ConnectionStateMachine.TestCase


# -- (b) the frame path of real servers ---------------------------------------------------


class _Records(logging.Handler):
    """Keeps the ERROR records of the server's loggers (the Handler's lock makes it thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@attrs.frozen
class ThreadedServer:
    """``serve()`` in a thread of its own, shared by every Hypothesis example of a test."""

    endpoint: Endpoint
    running: RunningServer
    errors: _Records
    crashed: list[BaseException]

    def check(self) -> None:
        assert not self.crashed, self.crashed
        assert [r.getMessage() for r in self.errors.records] == []


@contextmanager
def threaded_server(e2e: E2E) -> Iterator[ThreadedServer]:
    """Run ``serve()`` for ``e2e`` in a new thread; stop it (cancelled) on exit."""
    # Every example is a new connection of the same user, back to back: the per-user
    # connect budget and cool-down (tested in tests/app/test_asgi.py) are lifted.
    settings_ = e2e.settings(
        rate_burst=1_000, max_message_bytes=4096, connect_rate_per_s=0, abuse_cooldown_s=0
    )
    logger = logging.getLogger("trio_enclave")
    errors = _Records()
    logger.addHandler(errors)
    started: queue.Queue[RunningServer | BaseException] = queue.Queue()
    crashed: list[BaseException] = []
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        stopped = trio.Event()
        token = trio.lowlevel.current_trio_token()
        stop.append(partial(trio.from_thread.run_sync, stopped.set, trio_token=token))
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(
                partial(serve, settings_, services=build_services(settings_, logger))
            )
            started.put(running)
            await stopped.wait()
            nursery.cancel_scope.cancel()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # a crash of the server is what the tests look for
            crashed.append(exc)
            started.put(exc)

    thread = threading.Thread(target=run, name=f"fuzz-{e2e.transport}", daemon=True)
    thread.start()
    try:
        first = started.get(timeout=30)
        assert isinstance(first, RunningServer), first
        endpoint = e2e.endpoint("127.0.0.1", first.port)
        yield ThreadedServer(endpoint, first, errors, crashed)
    finally:
        if stop and thread.is_alive():
            stop[0]()
        thread.join(30)
        logger.removeHandler(errors)
    assert not thread.is_alive()


@pytest.fixture
def server(e2e: E2E) -> Iterator[ThreadedServer]:
    with threaded_server(e2e) as running:
        yield running


json_payloads = jsonish_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
chat_payloads = st.sampled_from(
    [
        b'{"type": "ping"}',
        b'{"type": "user_message", "text": "fuzz me", "client_id": "f1"}',
        b'{"type": "cancel", "run_id": "run_nope"}',
        b'{"type": "auth", "token": "not.a.token"}',
    ]
)
close_payloads = st.builds(
    lambda code, reason: code.to_bytes(2, "big") + reason,
    st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 1015, 2999, 3000, 4999, 5000, 0]),
    st.binary(max_size=8) | st.just("é".encode()),
) | st.binary(max_size=3)
#: Opcodes, weighted towards what a server must handle most: text, continuation, pings.
OPCODES: Final = [0x1, 0x1, 0x1, 0x0, 0x0, 0x9, 0x9, 0xA, 0x8, 0x2, 0x3, 0xB]


#: One frame to build: (opcode, payload, fin, masked, rsv); or raw bytes, written as is.
Chunk = tuple[int, bytes, bool, bool, int] | bytes


@st.composite
def frames(draw: st.DrawFn) -> Chunk:
    opcode = draw(st.sampled_from(OPCODES))
    if opcode == 0x8:
        payload = draw(close_payloads)
    elif opcode in (0x9, 0xA):
        payload = draw(st.binary(max_size=130))
    else:
        payload = draw(st.one_of(chat_payloads, json_payloads, st.binary(max_size=100)))
    if opcode in (0x0, 0x1) and draw(st.booleans()):  # cut inside a UTF-8 sequence or not
        payload = payload[: draw(st.integers(0, len(payload)))]
    fin = draw(st.sampled_from([True, True, True, False]))
    mask = draw(st.sampled_from([True] * 7 + [False]))
    rsv = draw(st.sampled_from([0] * 7 + [1, 2, 4]))
    return (opcode, payload, fin, mask, rsv)


#: A connection's worth of hostile input: frames, sometimes raw bytes among them.
wire_input = st.lists(frames() | st.binary(min_size=1, max_size=40), min_size=1, max_size=8)


def encode(hostile: Hostile, chunk: Chunk) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    opcode, payload, fin, mask, rsv = chunk
    return hostile.frame(opcode, payload, fin=fin, mask=mask, rsv=rsv)


async def attack(server: ThreadedServer, hostile: Hostile, chunks: list[Chunk]) -> None:
    """One connection: the chunks, then EOF; then the server must still serve a chat turn."""
    endpoint = server.endpoint
    async with hostile.wire(endpoint, endpoint.e2e.token("fuzzer")) as wire:
        for chunk in chunks:
            await wire.send(encode(hostile, chunk))
        # Then a close frame (unless a frame left open swallows it) and the end of input.
        await wire.send(hostile.frame(0x8, (1000).to_bytes(2, "big")))
        with suppress(trio.BrokenResourceError):
            await wire.client.stream.send_eof()
        # Hypercorn keeps a half-closed socket until its ping task wakes up
        # (``--ping-interval-s``): after a second, the client leaves first.
        with trio.move_on_after(1):
            await wire.finish()
        # A close frame of the client's is echoed (with its code, or none: 1005).
        closes = [c[1] for c in chunks if isinstance(c, tuple) and c[0] == 0x8]
        echoed = {int.from_bytes(payload[:2], "big") for payload in closes} | {1005}
        for code, _ in wire.closes:
            assert code in CLOSE_CODES | echoed, wire.closes
        for event in wire.events:
            if isinstance(event, wse.TextMessage):
                validate_server_event(json.loads(event.data))
    await hostile.healthy(endpoint)
    with trio.fail_after(10):
        while server.running.lifecycle.open_connections:  # noqa: ASYNC110 - a count
            await trio.sleep(0.01)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=wire_input)
def test_arbitrary_frames_never_close_1011_nor_stop_the_server(
    server: ThreadedServer, hostile: Hostile, chunks: list[Chunk]
) -> None:
    """Each example on one connection of a server shared by the whole test."""
    trio.run(attack, server, hostile, chunks)
    server.check()


def test_hand_built_frames_are_real_frames(hostile: Hostile) -> None:
    """The fuzzer's well-formed frames are read back by a server-side wsproto."""
    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(hostile.frame(0x1, b'{"type": "ping"}', fin=False))
    conn.receive_data(hostile.frame(0x0, b"" * 200))
    events = list(conn.events())
    assert [type(e) for e in events] == [wse.TextMessage, wse.TextMessage]
    assert "".join(e.data for e in events if isinstance(e, wse.TextMessage)) == '{"type": "ping"}'
