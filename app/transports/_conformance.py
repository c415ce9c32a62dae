"""The conformance echo route: what the Autobahn|Testsuite fuzzing client talks to.

Exists only with ``--conformance-echo true`` (``ENCLAVE_CONFORMANCE_ECHO``), a setting
for testing: the route needs no token and echoes whatever it gets, so a server with it
on is an open echo service. ``serve()`` logs :data:`STARTUP_WARNING` when it is on.
Without the setting the path is unknown on both transports (404 like any other).

Every message, text or binary, is sent back exactly as received (fragments joined,
an empty binary message as an empty binary frame), up to :data:`ECHO_MAX_MESSAGE_BYTES`
per message (larger: close 1009). There is no session, no JSON and no rate limit;
the connection still has bounds: ``idle_timeout_s`` without a message closes 1000
``idle_timeout``, a peer that takes no echo for ``send_timeout_s`` is closed 1008
``slow_consumer``, and it counts towards ``max_connections`` and the drain.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Protocol

import trio

from isolation import request_scoped

from ..core._codes import CloseCode, CloseReason
from ..services._settings import CONFORMANCE_ECHO_PATH, Settings
from ..session._session import CLOSE_TIMEOUT_S
from ..session._transport import TransportClosed
from .lean._connection import LeanTransport

if TYPE_CHECKING:
    from quart.wrappers import Websocket

__all__ = [
    "ECHO_MAX_MESSAGE_BYTES",
    "ECHO_PATH",
    "STARTUP_WARNING",
    "EchoTransport",
    "QuartEcho",
    "echo",
    "echo_path",
    "log_startup_warning",
    "serve_lean_echo",
    "serve_quart_echo",
]

#: Where the echo route is served when the setting is on.
ECHO_PATH: Final = CONFORMANCE_ECHO_PATH
#: Largest echoed message: Autobahn's cases 9.1.6 and 9.2.6 send 16 MiB in one message.
ECHO_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
STARTUP_WARNING: Final = (
    "CONFORMANCE ECHO IS ON: %s echoes anything to anyone, without a token. "
    "For conformance testing only; never enable it on a server that users can reach."
)


def echo_path(settings: Settings) -> str | None:
    """The echo route's path when ``settings`` enable it, else ``None``."""
    return ECHO_PATH if settings.conformance_echo else None


def log_startup_warning(settings: Settings, log: logging.Logger) -> None:
    """Log :data:`STARTUP_WARNING` (level WARNING) when the echo route is on."""
    if settings.conformance_echo:
        log.warning(STARTUP_WARNING, ECHO_PATH)


class EchoTransport(Protocol):
    """What :func:`echo` needs of a connection: whole messages of both kinds, and close."""

    async def receive_message(self) -> str | bytes:
        """The next message. Raises :class:`TransportClosed` once the peer closed or left."""
        ...

    async def send_message(self, message: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message. Raises TransportClosed."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; idempotent."""
        ...


async def echo(transport: EchoTransport, *, idle_timeout_s: float, send_timeout_s: float) -> None:
    """Send every message back as it came until the peer closes or leaves.

    Closes 1000 ``idle_timeout`` after ``idle_timeout_s`` without a message and 1008
    ``slow_consumer`` when an echo is not taken within ``send_timeout_s``.
    Cancellation: returns at once; no close frame is sent.
    """
    try:
        while True:
            with trio.move_on_after(idle_timeout_s) as idle:
                message = await transport.receive_message()
            if idle.cancelled_caught:
                await transport.close(CloseCode.NORMAL, CloseReason.IDLE_TIMEOUT)
                return
            with trio.move_on_after(send_timeout_s) as sending:
                await transport.send_message(message)
            if sending.cancelled_caught:
                await transport.close(CloseCode.POLICY_VIOLATION, CloseReason.SLOW_CONSUMER)
                return
    except TransportClosed:
        return


@request_scoped
class QuartEcho:
    """:class:`EchoTransport` over a Quart websocket (ASGI transport).

    Quart hands an empty binary message over as ``None`` (its ``bytes or text``);
    here it becomes ``b""`` again, so it is echoed as an empty binary frame.
    """

    def __init__(self, ws: Websocket) -> None:
        self._ws = ws

    async def receive_message(self) -> str | bytes:
        data: str | bytes | None = await self._ws.receive()
        return b"" if data is None else data

    async def send_message(self, message: str | bytes) -> None:
        await self._ws.send(message)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


async def serve_quart_echo(ws: Websocket, settings: Settings) -> None:
    """Accept the handshake, then echo over :class:`QuartEcho`; ASGI transport.

    The caller owns the connection's admission. Cancellation: returns at once (Quart
    cancels the handler when the peer leaves).
    """
    await ws.accept()
    await echo(
        QuartEcho(ws),
        idle_timeout_s=settings.idle_timeout_s,
        send_timeout_s=settings.send_timeout_s,
    )


async def serve_lean_echo(
    stream: trio.SocketStream,
    response: bytes,
    initial: bytes,
    *,
    settings: Settings,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Send the ``101`` ``response``, then echo over a :class:`LeanTransport`; lean transport.

    ``initial``: bytes that arrived after the request head. The caller owns the stream
    and the connection's admission. Cancellation: returns at once (the transport's
    ``finish`` closes the stream without a close frame).
    """
    with trio.move_on_after(settings.open_timeout_s) as opening:
        await stream.send_all(response)
    if opening.cancelled_caught:
        return
    transport = LeanTransport(
        stream, max_message_bytes=ECHO_MAX_MESSAGE_BYTES, logger=logger, initial=initial
    )
    try:
        await echo(
            transport,
            idle_timeout_s=settings.idle_timeout_s,
            send_timeout_s=settings.send_timeout_s,
        )
    finally:
        await transport.finish(CLOSE_TIMEOUT_S)
