"""Hostile opening handshakes, on both transports: each gets its answer, the server stays up.

Every request here carries a valid token, so the only defect is the one under test.
After each attack a well-behaved client still completes a chat turn on the same server.
The two transports answer malformed HTTP differently (the lean transport parses the
request itself and answers JSON; the ASGI transport leaves HTTP to Hypercorn and Quart);
the tables below pin both, and docs/security.md lists them.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Final

import pytest
import trio

if TYPE_CHECKING:
    from tests.security.conftest import E2E, Hostile, LiveServer

TOKEN: Final = "{token}"  # replaced by a valid token of the server under test
AUTH: Final = f"Authorization: Bearer {TOKEN}"
ORIGINS: Final = ("https://chat.example",)

#: case -> (request lines (after the request line), method, websocket headers?,
#: {transport: (status, JSON ``error`` or None when the body is not ours)}).
#: A status of None means the server reset the connection without an answer.
Case = tuple[tuple[str, ...], str, bool, dict[str, tuple[int | None, str | None]]]
CASES: Final[dict[str, Case]] = {
    "no-upgrade-headers": (
        (AUTH,),
        "GET",
        False,
        {"lean": (426, "upgrade_required"), "asgi": (400, None)},
    ),
    "upgrade-to-another-protocol": (
        ("Upgrade: websocket2", "Connection: Upgrade", f"Sec-WebSocket-Key: {'A' * 22}==", AUTH),
        "GET",
        False,
        {"lean": (426, "upgrade_required"), "asgi": (400, None)},
    ),
    "upgrade-to-h2c": (
        (
            "Upgrade: h2c",
            "Connection: Upgrade, HTTP2-Settings",
            "HTTP2-Settings: AAMAAABkAAQAoAAA",
            AUTH,
        ),
        "GET",
        False,
        # Hypercorn switches to HTTP/2 (RFC 7540 3.2); /ws then answers no WebSocket there.
        {"lean": (426, "upgrade_required"), "asgi": (101, None)},
    ),
    "upgrade-value-with-control-bytes": (
        ("Upgrade: web\x01socket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", AUTH),
        "GET",
        False,
        {"lean": (400, "bad_request"), "asgi": (400, None)},
    ),
    "connection-close-instead-of-upgrade": (
        ("Upgrade: websocket", "Connection: close", "Sec-WebSocket-Version: 13", AUTH),
        "GET",
        False,
        {"lean": (400, "bad_request"), "asgi": (400, None)},
    ),
    "missing-sec-websocket-key": (
        ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", AUTH),
        "GET",
        False,
        {"lean": (400, "bad_request"), "asgi": (400, None)},
    ),
    "sec-websocket-key-not-16-bytes": (
        (
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: short",
            "Sec-WebSocket-Version: 13",
            AUTH,
        ),
        "GET",
        False,
        # Hypercorn does not check the key's form; it answers it like any other key.
        {"lean": (400, "bad_request"), "asgi": (101, None)},
    ),
    "websocket-version-8": (
        (
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            AUTH,
        ),
        "GET",
        False,
        {"lean": (426, "upgrade_required"), "asgi": (400, None)},
    ),
    "post-upgrade": (
        (AUTH,),
        "POST",
        True,
        {"lean": (405, "method_not_allowed"), "asgi": (405, None)},
    ),
    "nul-byte-in-a-header": (
        ("X-Junk: a\x00b", AUTH),
        "GET",
        True,
        {"lean": (400, "bad_request"), "asgi": (400, None)},
    ),
    "header-line-without-colon": (
        ("this is not a header", AUTH),
        "GET",
        True,
        {"lean": (400, "bad_request"), "asgi": (400, None)},
    ),
    "obsolete-line-folding": (
        ("X-Folded: a", " b", AUTH),
        "GET",
        True,
        # h11 unfolds obs-fold (RFC 9112 allows either); the lean parser refuses it.
        {"lean": (400, "bad_request"), "asgi": (101, None)},
    ),
    "one-huge-header-1-mib": (
        ("X-Huge: " + "a" * (1 << 20), AUTH),
        "GET",
        True,
        # Hypercorn (h11) gives up on a head over 16 KiB it cannot parse in one read: it
        # answers 431 or, still receiving, resets the connection.
        {"lean": (431, "request_header_fields_too_large"), "asgi": (431, None)},
    ),
    "ten-thousand-headers": (
        (*(f"X-{i}: {i}" for i in range(10_000)), AUTH),
        "GET",
        True,
        {"lean": (431, "request_header_fields_too_large"), "asgi": (431, None)},
    ),
    "a-thousand-headers-within-the-size-limit": (
        (*(f"X-{i}: 1" for i in range(1_000)), AUTH),
        "GET",
        True,
        # The count is bounded by the 16 KiB head, not on its own: this one is served.
        {"lean": (101, None), "asgi": (101, None)},
    ),
    "wrong-origin": (
        ("Origin: https://evil.example", AUTH),
        "GET",
        True,
        {"lean": (403, "forbidden_origin"), "asgi": (403, "forbidden_origin")},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_upgrade_gets_its_documented_answer(
    case: str, e2e: E2E, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    lines, method, websocket, expected = CASES[case]
    status, error = expected[e2e.transport]
    async with e2e.server(allowed_origins=ORIGINS) as live:
        token = e2e.token("mallory")
        request = hostile.upgrade_request(
            *(line.replace(TOKEN, token) for line in lines), method=method, websocket=websocket
        )
        reply = await hostile.exchange(live, request)
        if status == 431 and e2e.transport == "asgi":
            assert reply.status in (431, None), reply
        else:
            assert reply.status == status, reply
        if error is not None:
            assert reply.headers["content-type"] == "application/json"
            assert reply.json()["error"] == error
        await hostile.healthy(live)
        await live.wait_connections(0)
    assert hostile.server_errors(caplog) == []


#: Half-open connections of the test below (``ENCLAVE_HOSTILE_LONG=1``: 5,000).
HALF_OPEN: Final = 5_000 if os.environ.get("ENCLAVE_HOSTILE_LONG") else 1_000


async def slowloris(live: LiveServer, deadline_s: float) -> float:
    """Trickle a request head one byte at a time; seconds until the server hung up."""
    stream = await trio.open_tcp_stream(live.host, live.port)
    async with stream:
        began = time.monotonic()
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        with trio.fail_after(deadline_s):
            while True:
                try:
                    await stream.send_all(b"a")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.05):
                    try:
                        if not await stream.receive_some(4096):
                            break
                    except trio.BrokenResourceError:
                        break
        return time.monotonic() - began


async def test_half_open_and_slowloris_connections_are_reaped(e2e: E2E, hostile: Hostile) -> None:
    """Silent TCP connections and a trickled handshake: real users connect and chat meanwhile.

    1,000 connections that never send a byte take no WebSocket slot (``max_connections``
    counts upgraded connections only: 10 here) and, like a slowloris trickling its
    head one byte every 50 ms, are dropped without an answer by the open timeout:
    ``--open-timeout-s`` on the lean transport, Hypercorn's keep-alive timeout (5 s,
    which the server does not change) on the ASGI transport.
    """
    open_timeout = 2.0 if e2e.transport == "lean" else 5.0
    async with e2e.server(open_timeout_s=2.0, max_connections=10) as live:
        socks: list[trio.socket.SocketType] = []
        reaped = 0
        trickled: list[float] = []

        async def trickle() -> None:
            trickled.append(await slowloris(live, open_timeout + 10))

        async def wait_reaped(sock: trio.socket.SocketType) -> None:
            nonlocal reaped
            try:
                data = await sock.recv(4096)
            except OSError:  # reset
                data = b""
            assert data == b"", data  # dropped without a word
            reaped += 1

        try:
            with trio.fail_after(60):
                for _ in range(HALF_OPEN):
                    sock = trio.socket.socket()
                    socks.append(sock)
                    await sock.connect((live.host, live.port))
            async with trio.open_nursery() as nursery:
                for sock in socks:
                    nursery.start_soon(wait_reaped, sock)
                nursery.start_soon(trickle)
                await hostile.healthy(live)
                # ... served while the attack was going on, without taking its slots:
                assert not trickled
                assert reaped < HALF_OPEN
                assert live.open_connections == 0
                with trio.fail_after(open_timeout + 30):
                    while reaped < HALF_OPEN:  # noqa: ASYNC110 - a count, no event to await
                        await trio.sleep(0.05)
        finally:
            for sock in socks:
                sock.close()
        assert trickled[0] > open_timeout * 0.8
        await hostile.healthy(live)
