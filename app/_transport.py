"""The small interface between a session and whatever carries its frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["BatchTransport", "HandshakeInfo", "Transport", "TransportClosed", "UnsupportedFrame"]


@attrs.frozen
class HandshakeInfo:
    """Facts of the opening handshake, as the transport saw them."""

    path: str
    headers: tuple[tuple[str, str], ...]  # names lower-case, in order received
    subprotocols: tuple[str, ...]
    query_string: str
    remote: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class TransportClosed(Exception):
    """The peer went away or the connection is already closed."""


class UnsupportedFrame(Exception):
    """The peer sent a binary frame; chat.v1 is text only."""


class Transport(Protocol):
    """One accepted WebSocket connection.

    ``pings`` tells whether :meth:`ping` works; when it is false the transport
    detects dead peers itself (for Hypercorn: its ping interval plus a read timeout).
    """

    @property
    def pings(self) -> bool: ...

    async def receive(self) -> str:
        """The next text message. Raises TransportClosed or UnsupportedFrame."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; blocks while the peer does not read. Raises TransportClosed."""
        ...

    async def ping(self) -> None:
        """Send a ping and return when its pong arrives."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; idempotent."""
        ...


@runtime_checkable
class BatchTransport(Transport, Protocol):
    """A :class:`Transport` that can also write several messages at once.

    ``send_many`` is optional: the session uses it when the transport has it and
    calls :meth:`Transport.send` once per message otherwise.
    """

    async def send_many(self, texts: Sequence[str]) -> None:
        """Send ``texts`` in order, in as few writes as possible. Raises TransportClosed.

        Cancellation: some of the messages may have been written (a transport may then
        refuse to send more, as a socket cut mid-frame must).
        """
        ...
