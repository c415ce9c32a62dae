"""The lean transport's WebSocket connection: websockets' sans-IO protocol on one Trio stream.

Why websockets and not wsproto, measured on the project's 2-core machine (CPython 3.11,
best of 5 x 50,000 frames, server side, ``Protocol.receive_data`` + decode against
``WSConnection.receive_data`` + ``events()``, then ``send_text`` against ``send``):

=====================================  ==================  ===========
frame                                  websockets 17.4     wsproto 1.3
=====================================  ==================  ===========
parse a masked 119-byte text frame     5.0 us              23.8 us
  the same, 8 frames per read          4.0 us              16.5 us
serialize a 159-byte text frame        1.7 us              5.2 us
parse a masked 60 KB text frame        16 us               175 us
serialize a 60 KB text frame           75 us               115 us
=====================================  ==================  ===========

websockets unmasks in C and checks sizes before reading a payload; it leaves UTF-8 of
text frames and the reassembly of fragments to the caller (done here).

Most frames a chat client sends are one masked, unfragmented text frame within the size
limit, whole in one read. Those are cut out of the read here and unmasked with
websockets' own C ``apply_mask``, without its generator-based parser (about 4 % of a
turn by the profile); every other frame (control frames, fragments, a frame split
across reads, anything malformed or too big) goes to the protocol, which then always
starts at a frame boundary, or is owed the rest of the frame it started.

Who does what, with no task of its own and no lock:

- reading happens only in :meth:`LeanTransport.receive` (the session's reader task), and
  after the session ended in :meth:`LeanTransport.finish`. Control frames are handled
  there: the protocol answers pings itself, pongs wake :meth:`ping`, a close frame is
  echoed and ends :meth:`receive` with :class:`TransportClosed`.
- writes from any task append to one queue; the first task to find no write in
  progress becomes the writer and writes the whole queue with one write per round
  (``write(2)`` straight away: a write the kernel takes costs no trip through the
  scheduler). ``send`` waits until its frames are on the wire (backpressure), each
  waiting task under its own deadline (:class:`SendTimeout` past it); control frames
  from the reader just join the queue when a write is in progress, up to
  :data:`MAX_BACKLOG_BYTES`: past it the reader waits too (a ping flood stays bounded).
- a cancelled write (slow consumer) keeps its unsent bytes at the head of the queue,
  so no frame is ever cut and the close frame can still follow if the peer reads
  again. A failed write (reset) ends all sending.
- while a write waits for the peer to read (the kernel's buffer is full), the next
  message is not handed out: a peer that does not read what it asked for gets no
  further work done for it (each 30 KB turn it sent started a run whose frames had
  nowhere to go) until it reads or the session's send timeout closes it. Control
  frames already read are still answered.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, cast

import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, SERVER, Protocol, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from isolation import request_scoped

from ...core._codes import CloseReason
from ...services._metrics import Traffic
from ...session._transport import SendTimeout, TransportClosed, UnsupportedFrame
from ._poller import ReadPoller

__all__ = ["LeanTransport", "QuietInfoLogger", "text_frame"]

#: Bytes asked of the stream per read. Each read is parsed in one scheduler step: a
#: peer that packs small frames gets at most this much parsed before others run.
READ_BYTES: Final = 16_384
#: While closing: how long the peer may stay silent before the stream is closed anyway.
LINGER_QUIET_S: Final = 1.0
#: Control frames (pongs) queued behind a blocked write past which reading waits for it.
MAX_BACKLOG_BYTES: Final = 65_536
#: While closing: how many bytes the peer may still send before the stream is closed
#: anyway. A client that floods past the close frame costs a bounded parse, not
#: ``wait_s`` of CPU (measured by ``python -m bench attacks``).
LINGER_BYTES: Final = 65_536


def text_frame(payload: bytes) -> bytes:
    """A server's unmasked, unfragmented text frame without extensions (RFC 6455 5.2).

    websockets' ``Protocol.send_text`` builds the same bytes through a ``Frame`` and its
    generic ``serialize`` (masking, extensions, checks): three times the time for the
    frames of a turn. The lean transport negotiates no extension, so its data frames
    are this header and the payload; control frames still come from the protocol.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65_536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def _closed() -> int:
    return -1


class QuietInfoLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger for websockets' protocol that drops its INFO records.

    websockets logs every closed server connection at INFO: an access log this server
    does not keep. Warnings and errors (a parser crash) still go through.
    """

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        pass


class _ServerProtocol(Protocol):
    """The server side of websockets' protocol, with two departures.

    It says ``message_too_big`` as the session does. And a close frame in the middle
    of a fragmented message is a normal close, answered with the peer's code: RFC 6455
    (5.4) lets control frames come between fragments, and the unfinished message is
    dropped. websockets fails the connection 1002 there (Autobahn case 7.1.5).
    """

    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            reason = str(CloseReason.MESSAGE_TOO_BIG)
        super().fail(code, reason)

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # websockets' "a fragmented message is unfinished"
        super().recv_frame(frame)

    #: ``state is OPEN`` as a plain attribute, for the reads of every frame: ``state`` is
    #: a property, 0.7 % of a turn. websockets makes every change through its setter.
    open = False

    @Protocol.state.setter  # type: ignore[attr-defined, untyped-decorator]
    def state(self, state: State) -> None:
        Protocol.state.fset(self, state)  # type: ignore[attr-defined]
        self.open = state is OPEN


@request_scoped
class LeanTransport:
    """:class:`~app.session._transport.Transport` over an upgraded Trio stream.

    ``max_message_bytes`` bounds a message (all its fragments) in bytes, as the session
    counts: a larger one is closed 1009 ``message_too_big`` before it is read. Protocol
    errors close 1002 (bad masking, control frame over 125 bytes, bad opcode or bits) or
    1007 (invalid UTF-8), and :meth:`receive` then raises :class:`TransportClosed`.
    """

    pings = True
    immediate_writes = True

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        *,
        max_message_bytes: int,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        initial: bytes = b"",
        traffic: Traffic | None = None,
        poller: ReadPoller | None = None,
        raw: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        # The process's counters (its own without one): plain ints, a few ns a frame.
        self._traffic = Traffic() if traffic is None else traffic
        # The close the server started (code, reason), for the metrics; see closed_with.
        self._closing: tuple[int, str] | None = None
        self._protocol = _ServerProtocol(
            SERVER, state=OPEN, max_size=max_message_bytes, logger=logger
        )
        # Frames read and not yet handed out, last first (popped from the end): a list,
        # since an empty deque costs every idle connection 600 bytes. ``bytes``: the
        # payload of a text message cut out by the fast path (see _parse).
        self._events: list[Frame | bytes] = []
        # The start of a frame whose header is not whole yet (at most 13 bytes), kept
        # here: the protocol is given frames from their first byte only.
        self._partial = b""
        # Bytes still to come of a frame the protocol was given the start of.
        self._owed = 0
        self._fragments: list[bytes] | None = None
        self._fragmented = Opcode.TEXT  # the opcode of the message in _fragments
        self._out: list[bytes] = []
        self._eof_wanted = False
        self._eof_sent = False
        self._writing = False  # a task is in _write_queue
        self._write_done: trio.Event | None = None  # set when it leaves; made by a waiter
        # Writes go straight to the socket when there is one (POSIX), so that a cancelled
        # write knows what it sent; any other stream (tests) uses send_all.
        self._socket: trio.socket.SocketType | None = None
        # Its descriptor, -1 once closed (never read or write a reused one): the stdlib
        # socket's C ``fileno`` when the caller has it (``raw``), since Trio's is a Python
        # call, about 1 % of a turn at one per write.
        self._fileno: Callable[[], int] = _closed
        if isinstance(stream, trio.SocketStream) and os.name == "posix":
            self._socket = stream.socket
            self._fileno = self._socket.fileno if raw is None else raw.fileno
        # The server's one epoll for reads (a socket registered once), else Trio's: what
        # a read waits on, chosen here rather than per message.
        self._poller: ReadPoller | None = None
        self._fd = -1  # the descriptor registered with the poller
        self._wait_readable: Callable[[Any], Awaitable[None]] = trio.lowlevel.wait_readable
        self._waited: Any = self._socket
        if poller is not None and self._socket is not None:
            self._fd = self._socket.fileno()
            poller.register(self._fd)
            self._poller = poller
            self._wait_readable, self._waited = poller.wait_readable, self._fd
        self._broken = False  # a write failed (or a send_all was cut): nothing more is sent
        self._stalled = False  # while closing, the peer took nothing for LINGER_QUIET_S
        self._sent_bytes = 0
        self._stuck: trio.Event | None = None  # set once a write waiting for the peer moves
        self._read_eof = False  # the peer's EOF (or reset) was read
        self._drained = True  # the last read took less than asked: nothing was left
        self._pong: tuple[bytes, Callable[[], None]] | None = None
        self._pings_sent = 0
        if initial:  # frames that arrived with the opening request
            self._traffic.bytes_in += len(initial)
            self._feed(initial)

    # -- reading -----------------------------------------------------------------

    async def receive(self) -> str:
        """The next text message, fragments joined.

        Raises :class:`UnsupportedFrame` for a binary message and :class:`TransportClosed`
        once the peer closed, left, or broke the protocol (the protocol has then sent
        its close frame). Waits while a write waits for the peer to read.
        Cancellation: nothing read is lost; the next call goes on.
        """
        text = cast("str", await self._receive(binary=False))
        self._traffic.frames_in += 1
        return text

    async def receive_message(self) -> str | bytes:
        """The next message, text (``str``) or binary (``bytes``), fragments joined.

        For the conformance echo route (``app/transports/_conformance.py``). Raises
        :class:`TransportClosed` as :meth:`receive`. Cancellation: as :meth:`receive`.
        """
        return await self._receive(binary=True)

    async def _receive(self, *, binary: bool) -> str | bytes:
        """The next message; without ``binary``, a binary one raises UnsupportedFrame."""
        events = self._events
        if events:
            # Frames left from an earlier read: let other connections run first, so a
            # peer that packs a thousand messages into one read gets one per turn of
            # the scheduler like everyone else. Nothing is taken before this point.
            await trio.lowlevel.checkpoint()
        while True:
            # A peer that leaves our frames unread gets nothing more done for it; checked
            # after every read too, since the write may have stalled while we waited.
            while (stuck := self._stuck) is not None:
                await stuck.wait()
            while events:
                frame = events.pop()
                if type(frame) is bytes:  # most messages: a text frame of the fast path
                    try:
                        return str(frame, "utf-8")
                    except UnicodeDecodeError:
                        await self._invalid_utf8()
                assert isinstance(frame, Frame)
                opcode = frame.opcode
                if opcode is Opcode.TEXT and frame.fin:  # most messages: one text frame
                    try:
                        return str(frame.data, "utf-8")
                    except UnicodeDecodeError:
                        await self._invalid_utf8()
                if opcode is Opcode.TEXT or (binary and opcode is Opcode.BINARY):
                    if frame.fin:
                        return bytes(frame.data)
                    self._fragments = [bytes(frame.data)]
                    self._fragmented = opcode
                elif opcode is Opcode.CONT:
                    if self._fragments is None:  # the rest of a binary message
                        raise UnsupportedFrame
                    self._fragments.append(bytes(frame.data))
                    if frame.fin:
                        data, self._fragments = b"".join(self._fragments), None
                        return await self._message(self._fragmented, data)
                elif opcode is Opcode.BINARY:
                    raise UnsupportedFrame
                elif opcode is Opcode.PONG:
                    self._got_pong(bytes(frame.data))
                elif opcode is Opcode.CLOSE:
                    raise TransportClosed
                # A ping: the protocol has queued its pong already.
            if self._read_eof or not self._protocol.open:
                raise TransportClosed
            await self._read()

    async def _message(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> str | bytes:
        if opcode is Opcode.TEXT:
            try:
                return str(data, "utf-8")
            except UnicodeDecodeError:
                await self._invalid_utf8()
        return bytes(data)

    async def _invalid_utf8(self) -> NoReturn:
        """Close 1007 and raise :class:`TransportClosed`."""
        # Frame boundaries are intact: close (not fail) so the peer's answer is parsed.
        if self._protocol.state is OPEN:
            self._protocol.send_close(CloseCode.INVALID_DATA, "invalid UTF-8")
            self._take_output()
        with contextlib.suppress(TransportClosed):
            await self._flush(wait=False, deadline=math.inf)
        raise TransportClosed from None

    def _feed(self, data: bytes | bytearray) -> None:
        protocol = self._protocol
        if data:
            frames = self._parse(data)
        else:
            self._read_eof = True
            if self._partial:  # a header cut short by the end: the protocol says so
                protocol.receive_data(self._partial)
                self._partial = b""
            protocol.receive_eof()
            frames = self._received()
        if frames:
            frames.reverse()
            self._events[:0] = frames
        self._take_output()

    def _received(self) -> list[Frame | bytes]:
        # Opened in state OPEN, the protocol yields frames only (no HTTP request/response).
        return cast("list[Frame | bytes]", self._protocol.events_received())

    def _parse(self, data: bytes | bytearray) -> list[Frame | bytes]:
        """The frames (and fast-path text payloads) in ``data``, in order.

        A masked text frame with FIN, no RSV bit, within the size limit, whole in
        ``data``, outside a fragmented message: its unmasked payload. Anything else goes
        to the protocol, from the start of its frame; once the protocol is no longer
        OPEN (a close was received or sent, or it failed), all of the input does.
        """
        protocol = self._protocol
        if self._partial:
            data, self._partial = self._partial + data, b""
        if not protocol.open:
            protocol.receive_data(data)
            return self._received()
        out: list[Frame | bytes] = []
        pos, end = 0, len(data)
        owed = self._owed
        if owed:  # the rest of the frame the protocol holds the start of
            pos = min(owed, end)
            self._owed = owed - pos
            protocol.receive_data(data[:pos])
            out.extend(self._received())
        limit = protocol.max_message_size
        while pos < end:
            if not protocol.open:  # it failed or took a close: the rest is its
                protocol.receive_data(data[pos:])
                out.extend(self._received())
                break
            if end - pos < 2:
                self._partial = bytes(data[pos:])
                break
            head, size = data[pos], data[pos + 1]
            length = size & 0x7F
            start = pos + 2
            if length == 126:
                start, length = pos + 4, int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                start, length = pos + 10, int.from_bytes(data[pos + 2 : pos + 10], "big")
            if size & 0x80:
                start += 4
            if start > end:  # the header itself is cut
                self._partial = bytes(data[pos:])
                break
            stop = start + length
            if (
                head == 0x81  # FIN, no RSV bit, text
                and size & 0x80
                and stop <= end
                and (limit is None or length <= limit)
                and protocol.current_size is None
            ):
                out.append(apply_mask(data[start:stop], data[start - 4 : start]))
            else:
                protocol.receive_data(data[pos:stop])
                out.extend(self._received())
                if stop > end:
                    self._owed = stop - end
            pos = stop
        return out

    async def _read(self) -> int:
        """Read and parse once; the number of bytes read (0: the peer's EOF).

        On a socket: ``read(2)``. After a short read the kernel's buffer was empty: wait
        for it to fill before reading, instead of a read that fails first (Trio's ``recv``
        does that read, then waits). After a full read, yield to the others first (a
        checkpoint either way).
        """
        sock = self._socket
        if sock is None:
            try:
                data = await self._stream.receive_some(READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        else:
            wait_readable, waited = self._wait_readable, self._waited
            if self._drained:
                await wait_readable(waited)
            else:
                await trio.lowlevel.checkpoint()
            data = b""
            while True:
                fd = self._fileno()  # -1 once closed
                if fd < 0:
                    break
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    await wait_readable(waited)
                    continue
                except OSError:
                    data = b""
                break
            self._drained = len(data) < READ_BYTES
        self._traffic.bytes_in += len(data)
        self._feed(data)
        if self._pending():
            # Pongs, a close echo, the protocol's own close frame: no waiting for a write
            # in progress, unless they pile up behind it (a ping flood while the peer does
            # not read): then reading waits too, so the queue stays bounded.
            backlog = sum(map(len, self._out)) > MAX_BACKLOG_BYTES
            with contextlib.suppress(TransportClosed):
                await self._flush(wait=backlog, deadline=math.inf)
        return len(data)

    def _got_pong(self, data: bytes) -> None:
        pong = self._pong
        if pong is not None and data == pong[0]:
            self._pong = None
            pong[1]()

    # -- writing -----------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._out) or (self._eof_wanted and not self._eof_sent)

    def _take_output(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._out.append(data)
            else:  # websockets' SEND_EOF: half-close once the bytes before it are out
                self._eof_wanted = True

    async def _flush(self, *, wait: bool, deadline: float) -> None:
        """Write the queue. With ``wait``, return only once the queue is empty.

        Raises :class:`TransportClosed` once a write failed, :class:`SendTimeout` when
        the peer took too little by ``deadline``. Cancellation: what was not written
        stays queued, whole.
        """
        while self._pending():
            if self._broken:
                raise TransportClosed
            if not self._writing:
                await self._write_queue(deadline)
            elif wait:  # the task writing now takes our bytes too
                # Made only when someone waits: most writes finish without a wait.
                done = self._write_done
                if done is None:
                    done = self._write_done = trio.Event()
                with trio.move_on_at(deadline):
                    await done.wait()
                if not done.is_set():
                    raise SendTimeout
            else:
                return

    async def _write_queue(self, deadline: float) -> None:
        self._writing = True
        try:
            while self._pending():
                if self._out:
                    data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                    self._out.clear()
                    await self._send(data, deadline)
                else:
                    await self._stream.send_eof()
                    self._eof_sent = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            self._out.clear()
            raise TransportClosed from None
        except BaseException:
            if self._socket is None:  # cancelled inside a stream's send_all: maybe cut
                self._broken = True
            raise
        finally:
            self._writing = False
            done, self._write_done = self._write_done, None
            if done is not None:
                done.set()

    async def _send(self, data: bytes, deadline: float) -> None:
        """``send_all`` by ``deadline``, keeping what was not sent at the head of the queue.

        On a socket: ``write(2)`` to the non-blocking descriptor, waiting for it only
        when the kernel buffer is full, and only then under a cancel scope: a write
        that does not block costs no trip through the scheduler and no deadline.
        Raises :class:`SendTimeout` past ``deadline``.
        """
        sock = self._socket
        if sock is None:
            with trio.move_on_at(deadline):
                await self._stream.send_all(data)
                self._sent_bytes += len(data)
                self._traffic.bytes_out += len(data)
                return
            self._broken = True  # cut inside send_all: the frame may be cut too
            raise SendTimeout
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                fd = self._fileno()  # -1 once closed
                if fd < 0:
                    raise trio.ClosedResourceError
                try:
                    n = os.write(fd, view[sent:])
                except BlockingIOError:
                    stuck = self._stuck = trio.Event()
                    try:
                        with trio.move_on_at(deadline) as waiting:
                            await trio.lowlevel.wait_writable(fd)
                    finally:
                        self._stuck = None
                        stuck.set()
                    if waiting.cancelled_caught:
                        raise SendTimeout from None
                    continue
                sent += n
                self._sent_bytes += n
                self._traffic.bytes_out += n
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        except BaseException:
            if sent < len(view):
                self._out.insert(0, bytes(view[sent:]))
            raise

    async def _flush_while_taken(self) -> bool:
        """Flush while the peer takes bytes; False once it took none for LINGER_QUIET_S."""
        while self._pending():
            before = self._sent_bytes
            with trio.move_on_after(LINGER_QUIET_S):
                await self._flush(wait=True, deadline=math.inf)
            if self._sent_bytes == before and self._pending():
                self._stalled = True
                return False
        return True

    def queue(self, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` (UTF-8 text) as text frames, in order, without writing them.

        Raises :class:`TransportClosed` once nothing more can be sent.
        """
        if self._broken or not self._protocol.open:
            raise TransportClosed
        out = self._out
        for frame in frames:
            out.append(text_frame(frame))
        self._traffic.frames_out += len(frames)

    def backlog(self) -> int:
        """Bytes queued and not yet written."""
        return sum(map(len, self._out))

    def write_now(self) -> bool:
        """Write what the kernel takes now, without waiting.

        True unless bytes are left that no task is writing (then someone must
        :meth:`flush`). A failed write ends all sending, as in :meth:`flush`.
        """
        out = self._out
        if self._writing or not out:
            return True
        sock = self._socket
        if sock is None or self._broken:
            return self._broken
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            fd = self._fileno()  # -1 once closed
            sent = os.write(fd, data) if fd >= 0 else -1
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = -1
        if sent < 0:
            self._broken = True
            return True
        self._sent_bytes += sent
        self._traffic.bytes_out += sent
        if sent < len(data):
            out.append(data[sent:])
            return False
        return True

    async def flush(self, deadline: float) -> None:
        """Return once everything queued is written, writing it unless a task already is.

        Blocks while the peer does not read; raises :class:`SendTimeout` when that
        lasts past ``deadline``, :class:`TransportClosed` once nothing can be sent.
        Cancellation: what was not written stays queued, whole.
        """
        await self._flush(wait=True, deadline=deadline)

    async def send(self, frames: Sequence[bytes], deadline: float) -> None:
        """:meth:`queue` then :meth:`flush`: returns once ``frames`` are written.

        Cancellation: part of the frames may have been written; the rest stay queued
        and go out, whole, before anything sent later.
        """
        self.queue(frames)
        await self._flush(wait=True, deadline=deadline)

    async def send_message(self, message: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message; returns once it is written.

        For the conformance echo route. Raises :class:`TransportClosed`. Cancellation:
        as :meth:`send`.
        """
        protocol = self._protocol
        if self._broken or protocol.state is not OPEN:
            raise TransportClosed
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        self._take_output()
        await self._flush(wait=True, deadline=math.inf)

    def ping(self, on_pong: Callable[[], None]) -> None:
        """Queue a ping (the caller writes it); ``on_pong`` is called when its pong arrives.

        The pong is read by :meth:`receive`, which calls ``on_pong``; only the latest
        ping's pong counts. Raises :class:`TransportClosed`.
        """
        if self._broken or self._protocol.state is not OPEN:
            raise TransportClosed
        self._pings_sent += 1
        payload = self._pings_sent.to_bytes(4, "big")
        self._pong = (payload, on_pong)
        self._protocol.send_ping(payload)
        self._take_output()

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` and ``reason``; idempotent.

        Waits while the peer takes the bytes queued before it, giving up once it takes
        none for :data:`LINGER_QUIET_S`; the peer's answer is awaited by :meth:`finish`.
        Raises :class:`TransportClosed` when nothing can be sent. Cancellation: the close
        frame stays queued for :meth:`finish`.
        """
        if self._closing is None:
            self._closing = (code, reason)
        if self._broken or self._stalled or self._protocol.state is not OPEN:
            return
        self._protocol.send_close(code, reason)
        self._take_output()
        await self._flush_while_taken()

    def closed_with(self) -> tuple[int | None, str | None]:
        """The close the server started: (code, reason), or (None, None) when the peer
        closed first or left. Its own closes (:meth:`close`) and the protocol's (1002,
        1007, 1009) count, sent or not; an echo of the peer's close does not.
        """
        if self._closing is not None:
            return self._closing
        sent = self._protocol.close_sent
        if sent is not None and not self._protocol.close_rcvd_then_sent:
            return int(sent.code), sent.reason
        return None, None

    async def finish(self, wait_s: float) -> None:
        """End the connection once the session is over, then close the stream.

        Writes what is queued, then reads (discarding) until the closing handshake is
        complete or the peer's EOF arrived, so that no TCP reset eats the close frame:
        for at most ``wait_s`` seconds, no longer than :data:`LINGER_QUIET_S` once
        the peer takes or sends nothing, and no further than :data:`LINGER_BYTES` read.
        A connection still open (the session was cancelled), whose writes failed or
        whose peer stalled is closed at once.
        Cancellation: the stream is closed at once.
        """
        protocol = self._protocol
        try:
            with trio.move_on_after(wait_s):
                if self._broken or self._stalled or protocol.state is OPEN:
                    return
                with contextlib.suppress(TransportClosed):
                    if not await self._flush_while_taken():
                        return
                budget = LINGER_BYTES
                while not (
                    self._broken
                    or self._read_eof
                    or protocol.state is CLOSED
                    or (protocol.close_rcvd is not None and protocol.close_sent is not None)
                ):
                    with trio.move_on_after(LINGER_QUIET_S) as quiet:
                        budget -= await self._read()
                    self._events.clear()
                    if quiet.cancelled_caught or budget <= 0:
                        break
        finally:
            if self._poller is not None:
                self._poller.forget(self._fd)
            await self._stream.aclose()
