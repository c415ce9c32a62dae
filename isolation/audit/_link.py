"""One WebSocket connection of one audited user: paced sends, a reader, bounded waits.

The :class:`Link` feeds every received frame to the user's ledger and wakes whoever
waits for it. Every wait is bounded (``frame_timeout``) and ends early, with
:class:`LinkClosed`, when the connection ends.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto.utilities import LocalProtocolError

from .._markers import request_scoped
from ._ledger import LOOKUP_TYPES, Observed, UserLedger
from ._plan import RunPlan

__all__ = [
    "INTERRUPTED",
    "ConnectFailed",
    "Endpoint",
    "FrameTimeout",
    "Limits",
    "Link",
    "LinkClosed",
    "Pacer",
    "with_link",
]

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

#: What :func:`with_link` returns when the connection broke inside the client library.
INTERRUPTED: Final = "interrupted"
#: Used when the server advertises no rate: chat.v1's documented default is 20/s.
_DEFAULT_RATE: Final = 20.0


class LinkClosed(Exception):
    """The connection ended while something was still expected on it."""


class FrameTimeout(Exception):
    """An expected frame did not arrive within the frame timeout."""


class ConnectFailed(Exception):
    """The TCP connect or the WebSocket handshake failed; ``status``: the HTTP refusal."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Endpoint:
    """Where a ws:// or wss:// URL points."""

    host: str
    port: int
    resource: str  # path and query
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raises ValueError unless ``url`` is ws://HOST[:PORT]/... or wss://..."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)  # raises ValueError for a bad port
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]
        return cls(parts.hostname, port, resource, netloc, tls)

    async def connect(self, tls: ssl.SSLContext | None) -> Stream:
        """A TCP (or TLS) stream to the endpoint. Raises OSError."""
        if not self.tls:
            return await trio.open_tcp_stream(self.host, self.port)
        context = tls or ssl.create_default_context()
        return await trio.open_ssl_over_tcp_stream(
            self.host, self.port, ssl_context=context, https_compatible=True
        )


@attrs.frozen
class Limits:
    """What the client keeps to: concurrent runs and its own message rate."""

    max_runs: int | None
    rate_per_s: float
    burst: int

    @classmethod
    def from_ready(cls, frame: Mapping[str, Any] | None, rate_override: float | None) -> Limits:
        """Half of the advertised rate and burst (at most 10), or ``rate_override``."""
        limits = frame.get("limits") if frame is not None else None
        limits = limits if isinstance(limits, Mapping) else {}
        max_runs = limits.get("max_runs")
        rate = limits.get("rate_per_s")
        burst = limits.get("rate_burst")
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            rate = _DEFAULT_RATE
        burst = burst if isinstance(burst, int) and burst > 0 else 2
        return cls(
            max_runs=max_runs if isinstance(max_runs, int) and max_runs > 0 else None,
            rate_per_s=rate_override or rate / 2,
            burst=max(1, min(10, burst // 2)),
        )


@request_scoped
class Pacer:
    """A client-side token bucket, so the audit never trips the server's rate limit."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = trio.current_time()

    async def take(self) -> None:
        while True:
            now = trio.current_time()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await trio.sleep((1.0 - self._tokens) / self._rate)


@attrs.define
class _Start:
    event: trio.Event = attrs.field(factory=trio.Event)
    answer: Observed | None = None


@request_scoped
class Link:
    """One open connection of one user. Run :meth:`reader` in a task first."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: Stream,
        ledger: UserLedger,
        *,
        frame_timeout: float,
        rate_override: float | None,
    ) -> None:
        self.ws = ws
        self._stream = stream
        self.ledger = ledger
        self.timeout = frame_timeout
        self._rate_override = rate_override
        self.limits = Limits.from_ready(None, rate_override)
        self.pacer = Pacer(self.limits.rate_per_s, self.limits.burst)
        self.ready_frame: Mapping[str, Any] | None = None
        self._ready = trio.Event()
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.dropped = False
        self.closing = False
        self.work_scope: trio.CancelScope | None = None
        self._starts: dict[str, _Start] = {}
        self._ends: dict[str, trio.Event] = {}
        self._ended: dict[str, int] = {}  # run_id -> frame index of its terminal event
        self._progress: dict[str, float] = {}
        self._replies: dict[str, list[Mapping[str, Any]]] = {}
        #: Answers to look-ups: (type, thread_id or "") -> frames, in order.
        self._lookups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        self._pongs = 0
        self._pong_index: dict[int, int] = {}  # pong number -> frame index
        self._pings = 0
        self._pong_event = trio.Event()
        self._waiting: set[trio.Event] = set()

    # -- reading -------------------------------------------------------------------

    async def reader(self) -> None:
        """Read until the connection ends; every frame goes through the ledger."""
        try:
            while True:
                message = await self.ws.get_message()
                if isinstance(message, bytes):
                    self.ledger.add_anomaly("bad-frame", f"binary frame of {len(message)} bytes")
                    continue
                self._dispatch(self.ledger.observe(message))
        except ConnectionClosed as exc:
            if exc.reason is not None:
                self.close_code, self.close_reason = exc.reason.code, exc.reason.reason
        finally:
            self.closed.set()
            for event in list(self._waiting):
                event.set()
            if self.work_scope is not None and not self.closing:
                self.work_scope.cancel()

    def _dispatch(self, seen: Observed) -> None:
        kind = seen.type
        if kind == "connection_ready" and self.ready_frame is None and seen.frame is not None:
            self.ready_frame = seen.frame
            self.limits = Limits.from_ready(seen.frame, self._rate_override)
            self.pacer = Pacer(self.limits.rate_per_s, self.limits.burst)
            self._ready.set()
        elif kind == "pong":
            self._pongs += 1
            self._pong_index[self._pongs] = seen.index
            self._pong_event.set()
            self._pong_event = trio.Event()
        if seen.tag is not None and kind in ("agent_started", "error", "duplicate_message"):
            start = self._starts.get(seen.tag)
            if start is not None and start.answer is None:
                start.answer = seen
                start.event.set()
        if seen.run_id is not None:
            self._progress[seen.run_id] = trio.current_time()
            if seen.terminal:
                self._ended.setdefault(seen.run_id, seen.index)
                self._ends.setdefault(seen.run_id, trio.Event()).set()
        if kind == "error" and seen.ref is not None and seen.frame is not None:
            self._replies.setdefault(seen.ref, []).append(seen.frame)
        if kind in LOOKUP_TYPES and seen.frame is not None:
            thread = seen.frame.get("thread_id")
            key = (kind, thread if isinstance(thread, str) else "")
            self._lookups.setdefault(key, []).append(seen.frame)

    async def _wait(self, event: trio.Event, until: float) -> None:
        """Wait for ``event`` until ``until``; also woken when the link closes.

        Events only wake; callers check the state they wait for afterwards.
        """
        if event.is_set() or self.closed.is_set():
            return
        self._waiting.add(event)
        try:
            with trio.move_on_at(until):
                await event.wait()
        finally:
            self._waiting.discard(event)

    @property
    def threads_supported(self) -> bool:
        """Whether the server keeps threads (its connection_ready names a store epoch):
        only then are history, threads and resume asked for."""
        return self.ready_frame is not None and "epoch" in self.ready_frame

    async def wait_ready(self) -> None:
        await self._wait(self._ready, trio.current_time() + self.timeout)
        if self.ready_frame is not None:
            return
        if self.closed.is_set():
            raise LinkClosed("closed before connection_ready")
        raise FrameTimeout("no connection_ready")

    # -- sending ---------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any], *, paced: bool = True) -> None:
        if paced:
            await self.pacer.take()
        await self._write(message)

    async def _write(self, message: Mapping[str, Any]) -> None:
        if self.closed.is_set():
            raise LinkClosed("connection closed")
        try:
            await self.ws.send_message(json.dumps(message))
        except ConnectionClosed:
            raise LinkClosed("connection closed") from None

    def was_sent(self, tag: str) -> bool:
        return tag in self._starts

    async def start(self, run: RunPlan, thread_id: str | None) -> None:
        """Send ``run``'s user_message (recorded in the ledger first)."""
        await self.pacer.take()
        if self.closed.is_set():
            raise LinkClosed("connection closed")
        message: dict[str, Any] = {"type": "user_message", "text": run.text}
        message["client_id"] = run.client_id
        if thread_id is not None:
            message["thread_id"] = thread_id
        self._starts[run.tag] = _Start()
        self.ledger.sent_message(
            client_id=run.client_id, text=run.text, thread_id=thread_id, tag=run.tag
        )
        await self._write(message)

    async def wait_start(self, tag: str) -> Observed:
        """The agent_started (or the error refusing it) answering message ``tag``."""
        start = self._starts[tag]
        await self._wait(start.event, trio.current_time() + self.timeout)
        if start.answer is not None:
            return start.answer
        if self.closed.is_set():
            raise LinkClosed("closed before agent_started")
        raise FrameTimeout(f"no agent_started for message {tag}")

    async def cancel(self, run_id: str) -> None:
        await self.pacer.take()
        self.ledger.sent_cancel(run_id)
        await self._write({"type": "cancel", "run_id": run_id})

    async def wait_end(self, run_id: str) -> None:
        """Wait for ``run_id``'s terminal event; the timeout restarts with each of its frames."""
        event = self._ends.setdefault(run_id, trio.Event())
        self._progress.setdefault(run_id, trio.current_time())
        while run_id not in self._ended:
            if self.closed.is_set():
                raise LinkClosed(f"closed before run {run_id} ended")
            until = self._progress[run_id] + self.timeout
            if trio.current_time() >= until:
                raise FrameTimeout(f"run {run_id}: no frame for {self.timeout:g} s")
            await self._wait(event, until)

    def end_index(self, run_id: str) -> int | None:
        """The frame index of ``run_id``'s terminal event, once received."""
        return self._ended.get(run_id)

    async def ping(self) -> int:
        """A ping/pong barrier: every frame the server sent before its pong has been read.

        Returns the frame index of the pong.
        """
        self._pings += 1
        wanted = self._pings
        await self.send({"type": "ping"})
        until = trio.current_time() + self.timeout
        while self._pongs < wanted:
            if self.closed.is_set():
                raise LinkClosed("closed before pong")
            if trio.current_time() >= until:
                raise FrameTimeout("no pong")
            await self._wait(self._pong_event, until)
        return self._pong_index[wanted]

    async def history(self, thread_id: str) -> None:
        """Ask for the newest page of ``thread_id``; read it with :meth:`answers`."""
        await self.pacer.take()
        self.ledger.sent_lookup(thread_id)
        await self._write({"type": "history", "thread_id": thread_id})

    async def resume(self, thread_id: str, after: int = 0) -> None:
        """Ask to resume ``thread_id`` after ``after``; read ``resumed`` with :meth:`answers`."""
        await self.pacer.take()
        self.ledger.sent_lookup(thread_id)
        await self._write({"type": "resume", "thread_id": thread_id, "after": after})

    async def threads(self) -> None:
        """Ask for this user's thread list; read it with :meth:`answers`."""
        await self.pacer.take()
        self.ledger.sent_lookup()
        await self._write({"type": "threads"})

    def answers(self, kind: str, thread_id: str = "") -> tuple[Mapping[str, Any], ...]:
        """Look-up answers of type ``kind`` (for ``thread_id``) received so far."""
        return tuple(self._lookups.get((kind, thread_id), ()))

    def replies(self, ref: str) -> tuple[Mapping[str, Any], ...]:
        """Error frames received so far whose ``ref`` is ``ref``."""
        return tuple(self._replies.get(ref, ()))

    # -- ending -----------------------------------------------------------------------

    async def drop(self) -> None:
        """End the connection abruptly: no close frame, a TCP reset."""
        self.dropped = True
        transport = self._stream
        if isinstance(transport, trio.SSLStream):
            transport = transport.transport_stream
        # SO_LINGER 0: closing sends a TCP reset; no close frame, not even a FIN.
        transport.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self._stream)
        if self.work_scope is not None:
            self.work_scope.cancel()

    async def close(self) -> None:
        """The normal end: the closing handshake, bounded by the frame timeout."""
        self.closing = True
        with trio.move_on_after(self.timeout):
            await self.ws.aclose()


async def with_link(
    endpoint: Endpoint,
    *,
    tls: ssl.SSLContext | None,
    protocols: Sequence[str] | None,
    headers: list[tuple[bytes, bytes]],
    wait_s: float,
    make_link: Callable[[WebSocketConnection, Stream], Link],
    body: Callable[[Link], Awaitable[str]],
) -> str:
    """Connect, make the link, run its reader and ``body``, close; return what ``body``
    returns (:data:`INTERRUPTED` if the client library broke the connection first).

    The closing handshake follows ``body`` unless the connection already ended.
    Raises :class:`ConnectFailed` when the TCP connect or the handshake fails. The TCP
    stream is ours and always closed: trio-websocket leaves it open when the server
    refuses the handshake.
    """
    try:
        with trio.fail_after(wait_s):
            stream = await endpoint.connect(tls)
    except (OSError, trio.TooSlowError) as exc:
        detail = str(exc) or f"no answer within {wait_s:g} s"
        url = f"{'wss' if endpoint.tls else 'ws'}://{endpoint.host_header}{endpoint.resource}"
        raise ConnectFailed(f"cannot connect to {url}: {detail}") from None
    failure: ConnectFailed | None = None
    result = INTERRUPTED
    try:
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(wait_s):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        endpoint.host_header,
                        endpoint.resource,
                        subprotocols=protocols,
                        extra_headers=headers,
                    )
                link = make_link(ws, stream)
                nursery.start_soon(link.reader)
                result = await body(link)
                if not (link.dropped or link.closed.is_set()):
                    await link.close()
                nursery.cancel_scope.cancel()
        except* ConnectionRejected as group:
            rejected = group.exceptions[0]
            assert isinstance(rejected, ConnectionRejected)
            shown = " ".join((rejected.body or b"").decode(errors="replace").split())[:300]
            status = rejected.status_code
            failure = ConnectFailed(f"HTTP {status} {shown}".strip(), status)
        except* (trio.TooSlowError, HandshakeError) as group:
            detail = str(group.exceptions[0]) or f"no answer within {wait_s:g} s"
            failure = ConnectFailed(f"handshake failed: {detail}")
        except* LocalProtocolError:
            # trio-websocket answers a server ping that arrives while it is closing;
            # wsproto refuses to send that pong and the library's reader task dies.
            pass
    finally:
        await trio.aclose_forcefully(stream)
    if failure is not None:
        raise failure
    return result
