"""The small interface between a session and whatever carries its frames."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

__all__ = ["HandshakeInfo", "SendTimeout", "Transport", "TransportClosed", "UnsupportedFrame"]


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


class SendTimeout(Exception):
    """A write was not done by its deadline: the peer does not read (a slow consumer)."""


class UnsupportedFrame(Exception):
    """The peer sent a binary frame; chat.v1 is text only."""


class Transport(Protocol):
    """One accepted WebSocket connection.

    There is one outbound path, one queue in the transport: :meth:`queue` appends
    frames, :meth:`write_now` writes what the peer takes without waiting, and
    :meth:`flush` waits until everything queued is written, writing it itself unless a
    task already is. Only a blocked write makes frames wait, and whoever writes next
    takes everything queued in one write.
    ``pings`` tells whether :meth:`ping` works; when it is false the transport
    detects dead peers itself (for Hypercorn: its ping interval plus a read timeout).
    """

    @property
    def pings(self) -> bool: ...

    @property
    def immediate_writes(self) -> bool:
        """Whether :meth:`write_now` writes without waiting (a socket it owns).

        Only then does a run queue its events and write them at its waits; otherwise
        each event is flushed as it is emitted.
        """
        ...

    async def receive(self) -> str:
        """The next text message. Raises TransportClosed or UnsupportedFrame."""
        ...

    def queue(self, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` (UTF-8 text messages, encoded once by the caller), in order.

        Raises :class:`TransportClosed` once nothing more can be sent.
        """
        ...

    def backlog(self) -> int:
        """Bytes queued and not yet written."""
        ...

    def write_now(self) -> bool:
        """Write what the peer takes now, without waiting.

        True unless frames are left that no task is writing: then a task must
        :meth:`flush`.
        """
        ...

    async def flush(self, deadline: float) -> None:
        """Return once everything queued is written.

        Raises :class:`TransportClosed`, or :class:`SendTimeout` when not written by
        ``deadline`` (Trio's clock). Cancellation: the frames stay queued, whole, and go
        out before anything queued later.
        """
        ...

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        """:meth:`queue` then :meth:`flush`."""
        ...

    def ping(self, on_pong: Callable[[], None]) -> None:
        """Queue a ping (write it with :meth:`write_now` or :meth:`flush`).

        ``on_pong`` is called, by the task that reads (or at once), when its pong
        arrives; only the latest ping's pong counts. Raises TransportClosed.
        """
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; idempotent."""
        ...
