"""A fast asyncio WebSocket client connection for the load generator.

``websockets``' sans-I/O :class:`~websockets.client.ClientProtocol` does the opening
handshake (request, response, ``Sec-WebSocket-Accept`` check) and builds every frame
the client sends (masked text, pongs, close). After the ``101`` the frames the server
sends -- never masked -- are parsed here with a few byte operations instead of
websockets' generator-based reader: the load generator receives five frames per
turn, and this is where most of its CPU went.

Subclasses implement :meth:`on_open`, :meth:`on_text`, :meth:`on_rejected` and
:meth:`on_closed`; everything runs in asyncio callbacks, with no task per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import ProtocolError
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

__all__ = ["FastClient", "parse_close"]

#: Largest frame accepted from the server.
MAX_FRAME_BYTES = 1 << 20
_HEAD_END = b"\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r]")
_TEXT, _CONT, _BINARY, _CLOSE, _PING, _PONG = 1, 0, 2, 8, 9, 10


def parse_close(payload: bytes) -> int:
    """The code of a close frame's payload (1005: none given)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


class FastClient(asyncio.Protocol):
    """One WebSocket client connection driven by asyncio callbacks."""

    __slots__ = ("_buf", "_fast", "_head", "_parts", "close_code", "proto", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.proto: ClientProtocol | None = None
        self.close_code: int | None = None  # from the server's close frame
        self._fast = False
        self._head = b""
        self._buf = b""
        self._parts: list[bytes] | None = None

    # -- hooks ------------------------------------------------------------------------

    def handshake(self) -> tuple[WebSocketURI, str]:
        """(URI, bearer token) of this connection."""
        raise NotImplementedError

    def on_open(self) -> None:
        """The server accepted the handshake."""

    def on_text(self, text: str) -> None:
        raise NotImplementedError

    def on_rejected(self, status: int) -> None:
        """The server answered the handshake with ``status`` instead of 101."""

    def on_closed(self, code: int) -> None:
        """The connection is gone; ``code`` from the server's close frame, or 1006."""

    def on_protocol_error(self, what: str) -> None:
        """The server broke the protocol; the connection is being closed."""

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast("asyncio.Transport", transport)
        uri, token = self.handshake()
        proto = ClientProtocol(uri, subprotocols=[Subprotocol("chat.v1")], max_size=MAX_FRAME_BYTES)
        request = proto.connect()
        request.headers["Authorization"] = "Bearer " + token
        proto.send_request(request)
        self.proto = proto
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._frames(data)
        else:
            self._opening(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_closed(self.close_code if self.close_code is not None else 1006)

    # -- sending ----------------------------------------------------------------------

    def flush(self) -> None:
        proto, transport = self.proto, self.transport
        if proto is None or transport is None or transport.is_closing():
            return
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)

    def send_text(self, data: bytes) -> bool:
        """Send one text frame; False when the connection is not open."""
        proto = self.proto
        if proto is None or proto.state is not State.OPEN or self.close_code is not None:
            return False
        proto.send_text(data)
        self.flush()
        return True

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (or just close before the handshake is done)."""
        proto, transport = self.proto, self.transport
        if transport is None or transport.is_closing():
            return
        if proto is not None and proto.state is State.OPEN and self._fast:
            proto.send_close(code)
            self.flush()
        else:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self._fast and self.close_code is None and self.transport is not None

    # -- receiving --------------------------------------------------------------------

    def _opening(self, data: bytes) -> None:
        proto = self.proto
        assert proto is not None
        head = self._head + data
        end = head.find(_HEAD_END)
        if end < 0:
            self._head = head
            return
        self._head = b""
        if not head.startswith(b"HTTP/1.1 101 "):
            # A refusal says all it has to in its status line. Its body may come in a later
            # read (Hypercorn writes head and body apart) and nothing waits for it.
            status = _STATUS.match(head)
            if status is None:
                self._fail("malformed response")
            else:
                self.on_rejected(int(status[1]))
                self.abort()
            return
        # A 101 has no body: the bytes after its head are frames, parsed here.
        proto.receive_data(head[: end + 4])
        for event in proto.events_received():
            if isinstance(event, Response):
                if proto.handshake_exc is None:
                    self._fast = True
                    self.on_open()
                else:
                    self.on_rejected(event.status_code)
                    self.abort()
                    return
        if self._fast and len(head) > end + 4:
            self._frames(head[end + 4 :])

    def _fail(self, what: str) -> None:
        self.on_protocol_error(what)
        self.close_code = 1002
        self.abort()

    def _frames(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if b1 & 0x80:
                self._fail("masked frame from the server")
                return
            if length > MAX_FRAME_BYTES:
                self._fail("frame too large")
                return
            end = start + length
            if end > size:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == _TEXT and b0 & 0x80 and self._parts is None:
                self._text(buf[start:end])
            elif opcode in (_TEXT, _CONT):
                if (self._parts is None) != (opcode == _TEXT):
                    self._fail("unexpected continuation")
                    return
                parts = self._parts = self._parts or []
                parts.append(buf[start:end])
                if b0 & 0x80:
                    self._parts = None
                    self._text(b"".join(parts))
            elif opcode == _PING:
                proto = self.proto
                if proto is not None and proto.state is State.OPEN:
                    proto.send_pong(buf[start:end])
                    self.flush()
            elif opcode == _CLOSE:
                self._closed_by_server(buf[start:end])
                return
            elif opcode == _BINARY:
                self._fail("binary frame")
                return
            elif opcode != _PONG:
                self._fail(f"opcode {opcode}")
                return
            if self.transport is None or self.transport.is_closing():
                return
        self._buf = buf[pos:] if pos < size else b""

    def _text(self, payload: bytes) -> None:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._fail("invalid UTF-8")
            return
        self.on_text(text)

    def _closed_by_server(self, payload: bytes) -> None:
        self.close_code = parse_close(payload)
        proto, transport = self.proto, self.transport
        if proto is not None and proto.state is State.OPEN:
            with contextlib.suppress(ProtocolError, ValueError):  # an unsendable code
                proto.send_close(self.close_code if self.close_code != 1005 else None)
            self.flush()
        if transport is not None:
            transport.close()
