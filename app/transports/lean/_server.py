"""The lean transport: Trio sockets, one task per connection, HTTP/1.1 answered here.

One port serves ``GET /health``, ``GET /ready``, ``GET /metrics``, the chat page (``GET /``,
``/app.js``, ``/app.css``; ``POST /dev/token`` in dev mode) and the WebSocket upgrade at
``settings.path``; everything the ASGI transport also answers comes from
``app/transports/_routes.py`` (same statuses, headers and JSON bodies), admission included and
in the same order: WebSocket headers, then ``admit`` (503), then the handshake
decision (403/400/401). After the ``101`` the connection's task runs the session over
:class:`~app.transports.lean._connection.LeanTransport`; the session's reader is the only reader and
frames it queues while the socket is busy leave in one write.

A request must arrive within ``open_timeout_s`` and fit in :data:`MAX_HEAD_BYTES`;
plain HTTP responses close the connection (no keep-alive).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import random
import re
import socket
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

import attrs
import trio

from ...auth._context import UserContext
from ...services._services import ServerLifecycle, Services
from ...session._session import CLOSE_TIMEOUT_S
from ...session._transport import HandshakeInfo
from ...web._dev_token import TokenMinter
from ...web._static import StaticFiles, load_static
from .._conformance import echo_path, log_startup_warning, serve_lean_echo
from .._handshake import Reject
from .._routes import (
    DEV_TOKEN_MAX_BODY,
    DEV_TOKEN_PATH,
    HttpReply,
    admit,
    decide,
    dev_token_reply,
    health_reply,
    json_reply,
    metrics_reply,
    page_reply,
    ready_reply,
    rejection_reply,
    run_counted_session,
)
from ._accept import accept_loop, raw_listener
from ._connection import LeanTransport, QuietInfoLogger
from ._poller import ReadPoller

__all__ = ["MAX_HEAD_BYTES", "serve_lean"]

#: Largest request head (request line and headers) accepted; larger gets 431.
MAX_HEAD_BYTES: Final = 16_384
#: After an HTTP response: how long to read what the client still sends before closing.
LINGER_S: Final = 2.0
#: The share of ``--open-timeout-s`` a connection's own timeout may be short of it.
OPEN_TIMEOUT_SPREAD: Final = 0.1
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET: Final = re.compile(rb"/[\x21-\x7e]*")
_HTTP_PATHS: Final = frozenset({"/health", "/ready", "/metrics"})
_CONTENT_LENGTH: Final = re.compile(r"[0-9]{1,9}")


def _error(status: int, detail: str, *headers: tuple[str, str]) -> HttpReply:
    """A JSON error in the shape of handshake rejections, ``error`` named after the status."""
    error = HTTPStatus(status).phrase.lower().replace(" ", "_")
    reply = json_reply({"error": error, "detail": detail}, status)
    return attrs.evolve(reply, headers=(*reply.headers, *headers))


@attrs.frozen
class _Request:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]  # names lower-case, in order received

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated elements of every ``name`` header, stripped."""
        return [t.strip() for v in self.values(name) for t in v.split(",") if t.strip()]


def parse_head(head: bytes) -> _Request | HttpReply:
    """A request head (without its final blank line), or the 400 refusing it."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if (
        len(parts) != 3
        or not _TOKEN.fullmatch(parts[0])
        or not _TARGET.fullmatch(parts[1])
        or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0")
    ):
        return _error(400, "malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return _error(400, "malformed header line")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    path, _, query = parts[1].decode("ascii").partition("?")
    return _Request(parts[0].decode("ascii"), path, query, tuple(headers))


@attrs.define
class _Opening:
    """A WebSocket's opening request on its way to the session: taken once, and
    forgotten by the box. The session outlives every frame that saw the request, and
    a frame keeps its locals: without the box each idle connection would keep its
    request's bytes and headers (about 2.5 KiB) for its whole life."""

    request: _Request | None
    rest: bytes

    def take(self) -> tuple[_Request, bytes]:
        request, rest = self.request, self.rest
        assert request is not None, "taken twice"
        self.request, self.rest = None, b""
        return request, rest


def _request_in(buffer: bytearray, start: int = 0) -> tuple[_Request, bytes] | HttpReply | None:
    """The request in ``buffer`` and the bytes after its head, the 4xx refusing it, or
    None while the head is incomplete (``start``: where its end may be, at the earliest)."""
    end = buffer.find(b"\r\n\r\n", start)
    if end > MAX_HEAD_BYTES or (end < 0 and len(buffer) > MAX_HEAD_BYTES):
        return _error(431, f"the request head exceeds {MAX_HEAD_BYTES} bytes")
    if end < 0:
        return None
    request = parse_head(bytes(buffer[:end]))
    return request if isinstance(request, HttpReply) else (request, bytes(buffer[end + 4 :]))


async def _read_request(
    stream: trio.abc.ReceiveStream, buffer: bytearray
) -> tuple[_Request, bytes] | HttpReply | None:
    """As :func:`_request_in`, reading until the head is complete; None if the peer left."""
    start = 0
    while (found := _request_in(buffer, start)) is None:
        start = max(0, len(buffer) - 3)
        data = await stream.receive_some(MAX_HEAD_BYTES)
        if not data:
            return None
        buffer += data
    return found


def encode_reply(reply: HttpReply, *, head_only: bool = False) -> bytes:
    """An HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    lines += [f"content-length: {len(reply.body)}", "connection: close", "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head if head_only else head + reply.body


def _websocket_key(request: _Request) -> str | HttpReply:
    """The client's key, or the answer refusing a malformed upgrade (RFC 6455 4.2.1)."""
    if request.values("sec-websocket-version") != ["13"]:
        return _error(426, "WebSocket version 13 is required", ("sec-websocket-version", "13"))
    keys = request.values("sec-websocket-key")
    if "upgrade" not in (t.lower() for t in request.tokens("connection")) or len(keys) != 1:
        return _error(400, "malformed WebSocket upgrade")
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return _error(400, "malformed Sec-WebSocket-Key")
    return keys[0]


def _accept(key: str, subprotocol: str | None) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-accept: {accept}",
    ]
    if subprotocol is not None:  # never a bearer.* entry: the token is not echoed
        lines.append(f"sec-websocket-protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@attrs.frozen
class _LeanServer:
    """What every connection handler shares: immutable services and the lifecycle."""

    services: Services
    lifecycle: ServerLifecycle
    ws_log: QuietInfoLogger
    static: StaticFiles
    minter: TokenMinter | None  # None unless --dev: then /dev/token is a 404
    poller: ReadPoller  # the connections' reads

    async def handle(self, conn: socket.socket, address: Any) -> None:
        """Serve one accepted TCP connection, HTTP or WebSocket; never raises an error.

        A bug is logged and drops only this connection. Cancellation: the connection
        is dropped without a close frame.
        """
        sock = trio.socket.from_stdlib_socket(conn)
        try:
            await self._connection(trio.SocketStream(sock), _host(address), conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer left
        except Exception:
            self.services.log.exception("internal error on a lean connection")
        finally:
            sock.close()  # no checkpoint needed: the task ends here

    async def _connection(
        self, stream: trio.SocketStream, peer: str | None, raw: socket.socket
    ) -> None:
        settings = self.services.settings
        # Most clients send their request with the connect: it is read without a wait.
        first = _read_now(stream)
        if first == b"":
            return  # the peer left
        buffer = bytearray(first or b"")
        opened = _request_in(buffer)
        if opened is None:
            # A slowloris is just dropped. Connections opened together must not all time
            # out in the same scheduler step (500 at once stalled every user for 45 ms):
            # each gets between 90 % and 100 % of the open timeout.
            open_s = settings.open_timeout_s * (1.0 - OPEN_TIMEOUT_SPREAD * random.random())
            with trio.move_on_after(open_s):
                opened = await _read_request(stream, buffer)
            if opened is None:
                return
        if isinstance(opened, HttpReply):
            await self._answer(stream, opened)
            return
        request, rest = opened
        del first, buffer, opened  # the request's bytes: see _Opening
        if request.path in (settings.path, echo_path(settings)):
            if request.method != "GET":
                await self._answer(stream, _error(405, "use GET", ("allow", "GET")))
            elif "websocket" not in (t.lower() for t in request.tokens("upgrade")):
                reply = _error(426, "a WebSocket upgrade is required", ("upgrade", "websocket"))
                await self._answer(stream, reply)
            else:
                opening = _Opening(request, rest)
                del request, rest
                await self._websocket(stream, opening, peer, raw)
        elif request.path in _HTTP_PATHS:
            if request.method not in ("GET", "HEAD"):
                await self._answer(stream, _error(405, "use GET", ("allow", "HEAD, GET")))
            elif request.path == "/health":
                await self._answer(stream, health_reply(), head_only=request.method == "HEAD")
            elif request.path == "/ready":
                reply = ready_reply(self.lifecycle)
                await self._answer(stream, reply, head_only=request.method == "HEAD")
            else:
                reply = metrics_reply(self.lifecycle)
                await self._answer(stream, reply, head_only=request.method == "HEAD")
        elif (page := page_reply(self.static, request.path)) is not None:
            if request.method not in ("GET", "HEAD"):
                await self._answer(stream, _error(405, "use GET", ("allow", "HEAD, GET")))
            else:
                await self._answer(stream, page, head_only=request.method == "HEAD")
        elif request.path == DEV_TOKEN_PATH and self.minter is not None:
            await self._dev_token(stream, request, rest, self.minter)
        else:
            await self._answer(stream, _error(404, f"nothing at {request.path[:64]}"))

    async def _dev_token(
        self, stream: trio.SocketStream, request: _Request, rest: bytes, minter: TokenMinter
    ) -> None:
        if request.method != "POST":
            await self._answer(stream, _error(405, "use POST", ("allow", "POST")))
            return
        body: bytes | HttpReply | None = None
        with trio.move_on_after(self.services.settings.open_timeout_s):
            body = await _read_body(stream, request, rest)
        if body is None:
            return  # the peer left, or took too long: dropped like a slow request head
        if isinstance(body, HttpReply):
            await self._answer(stream, body)
        else:
            await self._answer(stream, dev_token_reply(minter, body, self.services.wall_clock()))

    async def _answer(
        self,
        stream: trio.SocketStream,
        reply: HttpReply,
        *,
        head_only: bool = False,
        linger: bool = True,
    ) -> None:
        """Write ``reply`` and half-close; then read what is left (bounded) so no reset eats it.

        Without ``linger`` (a refused WebSocket handshake that sent nothing after its
        request: RFC 6455 4.1 has the client wait for the answer) the reading stops as
        soon as nothing is waiting. A connect flood is refused with no trip through
        the scheduler when the answer fits in the socket buffer (it always does).
        """
        data = encode_reply(reply, head_only=head_only)
        deadline = trio.current_time() + self.services.settings.open_timeout_s
        sent = _try_write(stream, data)
        if sent < len(data):
            with trio.move_on_at(deadline) as sending:
                await stream.send_all(data[sent:])
            if sending.cancelled_caught:
                return
        _half_close(stream)
        # Read once without waiting: a peer that sent nothing more has nothing to lose.
        if not linger and not _read_now(stream):
            return
        with trio.move_on_at(min(deadline, trio.current_time() + LINGER_S)):
            while await stream.receive_some(MAX_HEAD_BYTES):
                pass

    async def _websocket(
        self, stream: trio.SocketStream, opening: _Opening, peer: str | None, raw: socket.socket
    ) -> None:
        request, rest = opening.take()
        key = _websocket_key(request)
        if isinstance(key, HttpReply):
            await self._answer(stream, key)
            return
        services, lifecycle = self.services, self.lifecycle
        # Admission first, as on ASGI: a full or draining server spends nothing on crypto.
        refused = admit(lifecycle, services.settings.retry_after_s)
        if refused is not None:
            await self._answer(stream, rejection_reply(refused), linger=bool(rest))
            return
        if request.path != services.settings.path:  # the conformance echo: no token, no session
            try:
                await serve_lean_echo(
                    stream, _accept(key, None), rest, settings=services.settings, logger=self.ws_log
                )
            finally:
                lifecycle.release()
            return
        info = HandshakeInfo(
            path=request.path,
            headers=request.headers,
            subprotocols=tuple(request.tokens("sec-websocket-protocol")),
            query_string=request.query,
            remote=peer,
        )
        del request  # see _Opening; ``decide`` forgets ``info`` once it has decided
        held = True  # the server-wide slot ``admit`` counted
        try:
            async with decide(info, services, lifecycle) as decision:
                del info
                if isinstance(decision, Reject):
                    held = False
                    lifecycle.release()  # a refused handshake does not keep its slot while answered
                    await self._answer(stream, rejection_reply(decision), linger=bool(rest))
                    return
                with trio.move_on_after(services.settings.open_timeout_s) as accepting:
                    await stream.send_all(_accept(key, decision.subprotocol))
                if accepting.cancelled_caught:
                    return
                transport = LeanTransport(
                    stream,
                    max_message_bytes=services.settings.max_message_bytes,
                    logger=self.ws_log,
                    initial=rest,
                    traffic=lifecycle.metrics.traffic,
                    poller=self.poller,
                    raw=raw,
                )
                del rest, key
                context = UserContext.from_claims(decision.claims, carrier=decision.carrier)
                try:
                    await run_counted_session(transport, context, services, lifecycle)
                finally:
                    await transport.finish(CLOSE_TIMEOUT_S)
        finally:
            if held:
                lifecycle.release()


async def _read_body(
    stream: trio.abc.ReceiveStream, request: _Request, rest: bytes
) -> bytes | HttpReply | None:
    """The request's body (``content-length`` bytes, at most :data:`DEV_TOKEN_MAX_BODY`),
    the 4xx refusing it, or None if the peer left first. Unbounded in time: the caller's."""
    if request.values("transfer-encoding"):
        return _error(411, "send the body with a content-length")
    lengths = request.values("content-length") or ["0"]
    if len(lengths) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0]):
        return _error(400, "malformed content-length")
    length = int(lengths[0])
    if length > DEV_TOKEN_MAX_BODY:
        return _error(413, f"the body exceeds {DEV_TOKEN_MAX_BODY} bytes")
    body = bytearray(rest)
    while len(body) < length:
        data = await stream.receive_some(DEV_TOKEN_MAX_BODY)
        if not data:
            return None
        body += data
    return bytes(body[:length])


def _try_write(stream: trio.SocketStream, data: bytes) -> int:
    """Write what the socket takes now, without blocking; the number of bytes written."""
    try:
        return os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc


def _read_now(stream: trio.SocketStream) -> bytes | None:
    """What the peer sent so far, without blocking: None while nothing is waiting, b""
    once it left (EOF or reset)."""
    try:
        return os.read(stream.socket.fileno(), MAX_HEAD_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _half_close(stream: trio.SocketStream) -> None:
    try:
        stream.socket.shutdown(trio.socket.SHUT_WR)
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc


def _host(address: Any) -> str | None:
    return str(address[0]) if isinstance(address, tuple) else None


def _url(sockname: object) -> str:
    if isinstance(sockname, tuple):
        host, port = str(sockname[0]), int(sockname[1])
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return f"http://{sockname}"


async def serve_lean(
    services: Services,
    lifecycle: ServerLifecycle,
    *,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``settings.host:port``; hand ``task_status`` the URL; return after a drain.

    ``sockets``: listening sockets to accept on instead (a worker of ``--workers``: its
    own ``SO_REUSEPORT`` socket, or the one it inherited); they are closed on return.

    Once ``lifecycle`` drains, connections keep being accepted (``/ready`` and new
    handshakes answer 503) until every WebSocket connection closed — bounded as for
    the ASGI transport: grace, then ``send_timeout_s`` to flush, then the close — and
    then no longer; what is still open gets :data:`~app.session._session.CLOSE_TIMEOUT_S` more.
    Cancellation: stops at once; connections are dropped without a close frame.
    """
    settings = services.settings
    log_startup_warning(settings, services.log)
    if sockets is None:
        listeners = await trio.open_tcp_listeners(
            settings.port, host=settings.host, backlog=settings.backlog
        )
    else:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    poller = ReadPoller()
    server = _LeanServer(
        services,
        lifecycle,
        QuietInfoLogger(services.log.getChild("websocket")),
        load_static(ws_path=settings.path, dev_tokens=settings.dev_tokens),
        TokenMinter.from_settings(settings) if settings.dev_tokens else None,
        poller,
    )
    url = _url(listeners[0].socket.getsockname())
    raw = [raw_listener(listener) for listener in listeners]
    try:
        async with trio.open_nursery() as polling:
            await polling.start(poller.run)
            await _serve(server, raw, task_status, url)
            polling.cancel_scope.cancel()  # after the last connection: no reader is left
    finally:
        poller.close()


async def _serve(
    server: _LeanServer,
    raw: Sequence[socket.socket],
    task_status: trio.TaskStatus[str],
    url: str,
) -> None:
    """Accept on ``raw`` and serve until the drain is over (see :func:`serve_lean`)."""
    settings, lifecycle = server.services.settings, server.lifecycle
    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accepting:
            for listener in raw:
                accepting.start_soon(accept_loop, listener, server.handle, handlers)
            task_status.started(url)
            await lifecycle.draining.wait()
            # Sessions close themselves 1001 after the grace; this bounds the wait.
            limit = lifecycle.grace_deadline + settings.send_timeout_s + CLOSE_TIMEOUT_S
            with trio.move_on_at(limit):
                await lifecycle.wait_all_closed()
            accepting.cancel_scope.cancel()
        handlers.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
