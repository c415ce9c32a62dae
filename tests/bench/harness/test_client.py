"""The load generator's WebSocket client: handshake, frame parsing, control frames."""

from __future__ import annotations

import base64
import hashlib

import pytest
from websockets.uri import WebSocketURI, parse_uri

from bench.harness._client import FastClient, parse_close

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return False


class Recorder(FastClient):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.events: list[str] = []

    def handshake(self) -> tuple[WebSocketURI, str]:
        return parse_uri("ws://127.0.0.1:9/ws"), "tok"

    def on_open(self) -> None:
        self.events.append("open")

    def on_text(self, text: str) -> None:
        self.texts.append(text)

    def on_rejected(self, status: int) -> None:
        self.events.append(f"rejected {status}")

    def on_protocol_error(self, what: str) -> None:
        self.events.append(f"error {what}")

    def on_closed(self, code: int) -> None:
        self.events.append(f"closed {code}")


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def connect() -> tuple[Recorder, FakeTransport, bytes]:
    client, transport = Recorder(), FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    request = b"".join(transport.written).decode()
    assert request.startswith("GET /ws HTTP/1.1\r\n")
    assert "Authorization: Bearer tok\r\n" in request
    key = next(
        line.split(": ")[1]
        for line in request.split("\r\n")
        if line.startswith("Sec-WebSocket-Key")
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat.v1\r\n\r\n"
    ).encode()
    transport.written.clear()
    return client, transport, response


def test_frames_after_the_101_in_the_same_read_are_parsed() -> None:
    client, _, response = connect()
    client.data_received(response + frame(1, b'{"type":"connection_ready"}'))
    assert client.events == ["open"]
    assert client.texts == ['{"type":"connection_ready"}']
    assert client.is_open


def test_frames_split_anywhere_and_long_lengths() -> None:
    client, _, response = connect()
    medium, large = "m" * 300, "L" * 70_000
    data = response + frame(1, b"one") + frame(1, medium.encode()) + frame(1, large.encode())
    for i in range(0, len(data), 7):
        client.data_received(data[i : i + 7])
    assert client.texts == ["one", medium, large]


def test_fragmented_text_is_joined() -> None:
    client, _, response = connect()
    client.data_received(response)
    client.data_received(frame(1, "hé".encode()[:2], fin=False) + frame(0, "hé".encode()[2:]))
    assert client.texts == ["hé"]


def test_ping_is_answered_with_a_masked_pong() -> None:
    client, transport, response = connect()
    client.data_received(response + frame(9, b"abc"))
    pong = b"".join(transport.written)
    assert pong[0] == 0x8A
    assert pong[1] == 0x80 | 3


def test_close_from_the_server_is_echoed_and_recorded() -> None:
    client, transport, response = connect()
    client.data_received(response + frame(8, (1001).to_bytes(2, "big") + b"server_shutdown"))
    assert client.close_code == 1001
    assert b"".join(transport.written)[0] == 0x88
    assert transport.closed
    client.connection_lost(None)
    assert client.events[-1] == "closed 1001"


def test_client_close_waits_for_the_server_echo() -> None:
    client, transport, response = connect()
    client.data_received(response)
    client.close(1000)
    assert b"".join(transport.written)[0] == 0x88
    assert not transport.closed
    client.data_received(frame(8, (1000).to_bytes(2, "big")))
    assert transport.closed
    assert client.close_code == 1000
    assert not client.send_text(b"late")


def test_rejected_handshake_reports_the_status() -> None:
    client, transport, _ = connect()
    body = b'{"error": "invalid_token", "detail": "bad signature"}'
    client.data_received(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert client.events == ["rejected 401"]
    assert transport.aborted


def test_a_refusal_whose_body_comes_later_is_reported_at_its_head() -> None:
    # Hypercorn writes a refusal's head and body apart: the head alone tells the status.
    client, transport, _ = connect()
    client.data_received(b"HTTP/1.1 429 \r\ncontent-length: 40\r\nretry-after: 1\r\n")
    assert client.events == []
    client.data_received(b"\r\n")
    assert client.events == ["rejected 429"]
    assert transport.aborted


def test_a_malformed_response_is_a_protocol_error() -> None:
    client, transport, _ = connect()
    client.data_received(b"SPDY/3 200 OK\r\n\r\n")
    assert client.events == ["error malformed response"]
    assert transport.aborted


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (bytes([0x81, 0x80 | 1]) + b"\0\0\0\0x", "masked frame from the server"),
        (frame(1, b"\xff\xfe"), "invalid UTF-8"),
        (frame(2, b"bin"), "binary frame"),
        (frame(0, b"cont"), "unexpected continuation"),
    ],
)
def test_protocol_errors_abort_the_connection(data: bytes, what: str) -> None:
    client, transport, response = connect()
    client.data_received(response + data)
    assert client.events[-1] == f"error {what}"
    assert transport.aborted
    assert client.close_code == 1002


def test_parse_close() -> None:
    assert parse_close(b"\x03\xe8bye") == 1000
    assert parse_close(b"") == 1005
