"""``enclave chat``: the interactive terminal client of chat.v1, over trio-websocket.

Lines read from standard input become ``user_message`` frames (slash commands
aside); every frame the server sends is printed, either as one readable line
(:func:`format_event`) or, with ``json_mode``, as its raw JSON text. At the end
of input the client waits for the runs it started to end, then closes 1000, so
``echo hello | enclave chat ...`` is a one-shot command.

With ``resume``, the client keeps one thread (``--thread`` or the first one the
server names), shows it from the start, and after a dropped connection reconnects
by itself and resumes after the last ``thread_seq`` it saw: nothing shown twice,
nothing missed; messages not yet accepted are sent again with the same
``client_id`` (the server answers ``duplicate_message`` rather than run them twice).
"""

from __future__ import annotations

import datetime as dt
import http
import json
import os
import ssl
import sys
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

from isolation import request_scoped

from ..core._codes import PROTOCOL

__all__ = ["DRAIN_TIMEOUT_S", "HELP", "format_event", "run_chat"]

#: The longest the client waits, at the end of input, for its runs to end.
DRAIN_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 5.0
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

#: Events that end a run.
TERMINAL_TYPES: Final = frozenset({"agent_completed", "agent_error", "run_cancelled"})
RUN_TYPES: Final = frozenset(
    {"agent_started", "agent_thinking", "tool_executing", "tool_completed"} | TERMINAL_TYPES
)
#: Close codes of a normal end: the exit code is 0.
NORMAL_CLOSE_CODES: Final = frozenset({1000, 1001})
#: Close codes after which a resuming client reconnects (the server went away or
#: failed, or no close frame came at all).
RECONNECT_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
#: Waits before each reconnection attempt, seconds; then the client gives up.
RECONNECT_DELAYS_S: Final = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

HELP: Final = (
    "commands:",
    "  /cancel [run_id]  cancel a run (default: the latest one still running;",
    "                    a unique prefix of a running run's id is enough)",
    "  /ping             check the connection (the server answers pong)",
    "  /history          show the thread's last events (with --thread or --resume)",
    "  /quit             close the connection and exit",
    "  /help             show this help",
    "  //text            send a message that starts with '/'",
    "any other line is sent as a message",
)

_READ_BYTES: Final = 65_536
_SHOWN_CHARS: Final = 200
_CONNECTION_ID_CHARS: Final = 12
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

Output = Callable[[str], None]


# -- formatting (pure) ---------------------------------------------------------


def _escape(ch: str) -> str:
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _UNSAFE_CATEGORIES:
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def _clean(text: str) -> str:
    """``text`` on one terminal-safe line: control, separator, bidi and surrogate characters
    are escaped, so a server cannot break lines, move the cursor or make printing fail."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _not_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    return f"<{type(value).__name__}>"


def _json(value: Any, *, compact: bool = False) -> str:
    """``value`` as one line of JSON; never raises."""
    try:
        text = json.dumps(
            value,
            ensure_ascii=False,
            separators=(",", ":") if compact else None,
            default=_not_json,
        )
    except (TypeError, ValueError, RecursionError):  # cycles, huge ints, odd keys
        return f"<{type(value).__name__}>"
    return _clean(text)


def _text(value: Any) -> str:
    """A field shown as plain text: a string as is (made safe), ``?`` when missing, else JSON."""
    if value is None:
        return "?"
    if isinstance(value, str):
        return _clean(value)
    return _json(value)


def _short(value: Any, keep: int) -> str:
    text = _text(value)
    return text if len(text) <= keep + 1 else text[:keep] + "…"


def _when(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromtimestamp(value, tz=dt.UTC)
        except (OverflowError, ValueError, OSError):
            return _json(value)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return _text(value)


def _problem(code: Any, message: Any) -> str:
    return f"{_text(code)}: {_text(message)}"


def _run_line(kind: str, event: Mapping[str, Any]) -> str:
    prefix = f"[{_text(event.get('run_id'))} #{_text(event.get('seq'))}]"
    if kind == "agent_started":
        client_id = event.get("client_id")
        mine = "" if client_id is None else f" ({_text(client_id)})"
        thread = _text(event.get("thread_id"))
        return f"{prefix} started {_text(event.get('agent'))}{mine} in {thread}"
    if kind == "agent_thinking":
        return f"{prefix} thinking: {_text(event.get('thought'))}"
    if kind == "tool_executing":
        return f"{prefix} tool {_text(event.get('tool_name'))} ← {_json(event.get('tool_input'))}"
    if kind == "tool_completed":
        return f"{prefix} tool {_text(event.get('tool_name'))} → {_json(event.get('results'))}"
    if kind == "agent_completed":
        return f"{prefix} completed: {_json(event.get('result'))}"
    if kind == "agent_error":
        error = event.get("error")
        if isinstance(error, Mapping):
            return f"{prefix} error {_problem(error.get('code'), error.get('message'))}"
        return f"{prefix} error {_text(error)}"
    return f"{prefix} cancelled ({_text(event.get('reason'))})"


def _error_line(event: Mapping[str, Any]) -> str:
    about = [f"{name} {_text(event.get(name))}" for name in ("ref", "field") if name in event]
    suffix = f" ({', '.join(about)})" if about else ""
    return f"error {_problem(event.get('code'), event.get('message'))}{suffix}"


def format_event(event: Mapping[str, Any]) -> str:
    """One server event as one readable, terminal-safe line. Pure; never raises.

    Missing fields show as ``?``, JSON values (tool input and results, run
    results) as JSON, and an event of an unknown type as compact JSON.
    """
    if not isinstance(event, Mapping):
        return _json(event, compact=True)
    kind = event.get("type")
    if not isinstance(kind, str):
        return _json(event, compact=True)
    if kind in RUN_TYPES:
        return _run_line(kind, event)
    if kind == "connection_ready":
        user = _text(event.get("user_id"))
        connection = _short(event.get("connection_id"), _CONNECTION_ID_CHARS)
        return f"connected as {user} ({connection}) — {_text(event.get('protocol'))}"
    if kind == "error":
        return _error_line(event)
    if kind == "pong":
        return "pong"
    if kind == "auth_ok":
        return f"auth ok (expires {_when(event.get('expires_at'))})"
    if kind == "message_accepted":
        return f"[{_text(event.get('run_id'))}] you: {_text(event.get('text'))}"
    if kind == "resumed":
        thread = _text(event.get("thread_id"))
        if event.get("recovered") is True:
            return f"resumed {thread} after #{_text(event.get('last_seq'))}"
        return f"cannot resume {thread}: {_text(event.get('reason'))}"
    if kind == "duplicate_message":
        return (
            f"already sent ({_text(event.get('client_id'))}): "
            f"run {_text(event.get('run_id'))} in {_text(event.get('thread_id'))}"
        )
    if kind == "history_page":
        events = event.get("events")
        count = len(events) if isinstance(events, list) else "?"
        more = " (older ones remain)" if event.get("has_more") is True else ""
        return f"history of {_text(event.get('thread_id'))}: {count} event(s){more}"
    return _json(event, compact=True)


def _rejection(exc: trio_websocket.ConnectionRejected) -> str:
    """``error: <status> <error>: <detail>`` for a refused handshake."""
    body = exc.body or b""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        parsed = None
    if isinstance(parsed, dict):
        parts = [parsed.get("error"), parsed.get("detail")]
        text = ": ".join(_clean(p) for p in parts if isinstance(p, str) and p)
    else:
        text = _clean(body.decode("utf-8", "replace").strip()[:_SHOWN_CHARS])
    if not text:
        try:
            text = http.HTTPStatus(exc.status_code).phrase
        except ValueError:
            text = "rejected"
    for name, value in exc.headers:
        if name.lower() == b"retry-after":
            text += f" (retry after {_clean(value.decode('latin-1'))} s)"
    return f"error: {exc.status_code} {text}"


def _os_reason(exc: OSError) -> str:
    """Why a connect failed: ``Connection refused`` rather than ``all attempts ... failed``."""
    if exc.strerror:
        return exc.strerror
    reasons: list[str] = []
    pending: list[BaseException | None] = [exc.__cause__]
    while pending:
        inner = pending.pop()
        if isinstance(inner, BaseExceptionGroup):
            pending.extend(inner.exceptions)
        elif isinstance(inner, OSError) and inner.strerror and inner.strerror not in reasons:
            reasons.append(inner.strerror)
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def _close_line(reason: trio_websocket.CloseReason | None) -> tuple[int, str]:
    if reason is None:
        return 1006, "closed: 1006 connection lost"
    why = reason.reason or reason.name.lower()
    return reason.code, f"closed: {reason.code} {_clean(why)}"


def _print_out(line: str) -> None:
    print(line, flush=True)


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- the client ----------------------------------------------------------------


class _LineReader:
    """Lines (without their end) of a byte stream; read errors count as the end."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._scanned = 0
        self._eof = False

    async def readline(self) -> str | None:
        """The next line, or ``None`` at the end. Cancellation: no data is lost."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                return self._take(end, end + 1)
            if self._eof:
                return self._take(len(self._buffer), len(self._buffer)) if self._buffer else None
            self._scanned = len(self._buffer)
            try:
                chunk = await self._stream.receive_some(_READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    @property
    def ended(self) -> bool:
        """Every line was read."""
        return self._eof and not self._buffer

    def _take(self, end: int, consumed: int) -> str:
        raw = bytes(self._buffer[:end])
        del self._buffer[:consumed]
        self._scanned = 0
        return raw.decode("utf-8", "replace").removesuffix("\r")


@request_scoped
@attrs.define
class _Conversation:
    """What one ``run_chat`` call knows across its connections (one, unless resuming)."""

    thread_id: str | None
    resume: bool
    sent: int = 0
    #: client_id -> text of messages sent that have neither started a run nor been refused.
    pending: dict[str, str] = attrs.field(factory=dict)
    #: run_ids started and not ended yet, oldest first (a dict as an ordered set).
    open_runs: dict[str, None] = attrs.field(factory=dict)
    #: The last thread_seq seen of ``thread_id`` and the store's epoch then.
    last_seq: int = 0
    epoch: str | None = None
    #: Set by a dropped connection that should be resumed.
    reconnect: bool = False
    connected: bool = False


@request_scoped
class _ChatClient:
    """One connection of a ``run_chat`` call: input, events, and its conversation."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        *,
        json_mode: bool,
        conversation: _Conversation,
        out: Output,
        note: Output,
        drain_timeout_s: float,
        interactive: bool,
    ) -> None:
        self._ws = ws
        self._json_mode = json_mode
        self._conv = conversation
        self._out = out
        self._note = note
        self._drain_timeout_s = drain_timeout_s
        self._interactive = interactive
        #: pings sent and not answered yet.
        self._pings = 0
        self._changed = trio.Event()
        self._closing = False
        self.exit_code = EXIT_OK

    async def run(self, lines: _LineReader) -> None:
        """Read input and receive events until either ends the chat; sets ``exit_code``.

        Cancellation: both tasks stop at once; the connection is left as it is.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_events, nursery.cancel_scope)
            nursery.start_soon(self._read_input, lines, nursery.cancel_scope)

    # -- input -------------------------------------------------------------

    async def _read_input(self, lines: _LineReader, scope: trio.CancelScope) -> None:
        try:
            await self._rejoin()
            while True:
                line = await lines.readline()
                if line is None:
                    await self._wait_for_runs()
                    break
                if not await self._handle_line(line):
                    break
        except trio_websocket.ConnectionClosed:
            return  # the receiver reports how the connection ended
        await self._close()
        scope.cancel()

    async def _rejoin(self) -> None:
        """On a resuming client's connection: the thread since what it saw, then what it
        sent and never saw accepted, again (same client_id: not run twice)."""
        conv = self._conv
        if not conv.resume or conv.thread_id is None:
            return
        resume: dict[str, Any] = {"type": "resume", "thread_id": conv.thread_id}
        resume["after"] = conv.last_seq
        if conv.epoch is not None and conv.last_seq:
            resume["epoch"] = conv.epoch
        await self._send(resume)
        for client_id, text in list(conv.pending.items()):
            await self._send(
                {
                    "type": "user_message",
                    "text": text,
                    "client_id": client_id,
                    "thread_id": conv.thread_id,
                }
            )

    async def _handle_line(self, line: str) -> bool:
        """Act on one input line; false for ``/quit``."""
        if line.startswith("//"):
            await self._send_message(line[1:])
        elif line.startswith("/"):
            return await self._command(line.split())
        elif line.strip():
            await self._send_message(line)
        return True

    async def _command(self, words: Sequence[str]) -> bool:
        name, args = words[0].lower(), words[1:]
        if name == "/quit":
            return False
        if name == "/ping":
            self._pings += 1
            await self._send({"type": "ping"})
        elif name == "/cancel":
            await self._cancel(args[0] if args else None)
        elif name == "/history" and self._conv.thread_id is not None:
            await self._send({"type": "history", "thread_id": self._conv.thread_id})
        else:
            if name != "/help":
                self._note(f"unknown command {_clean(name)}")
            for line in HELP:
                self._note(line)
        return True

    async def _send_message(self, text: str) -> None:
        conv = self._conv
        conv.sent += 1
        client_id = f"c{conv.sent}"
        message = {"type": "user_message", "text": text, "client_id": client_id}
        if conv.thread_id is not None:
            message["thread_id"] = conv.thread_id
        conv.pending[client_id] = text  # before sending: the reply may come at once
        await self._send(message)

    async def _cancel(self, wanted: str | None) -> None:
        open_runs = self._conv.open_runs
        if wanted is None:
            if not open_runs:
                self._note("no run to cancel")
                return
            run_id = next(reversed(open_runs))
        else:
            matches = [r for r in open_runs if r.startswith(wanted)]
            run_id = matches[0] if len(matches) == 1 and wanted not in open_runs else wanted
        await self._send({"type": "cancel", "run_id": run_id})

    async def _send(self, message: Mapping[str, Any]) -> None:
        await self._ws.send_message(json.dumps(message, ensure_ascii=False))

    async def _wait_for_runs(self) -> None:
        """Until every message sent has started a run (or was refused), every run has
        ended and every ping has its pong -- at most ``drain_timeout_s``."""
        conv = self._conv
        with trio.move_on_after(self._drain_timeout_s):
            while conv.pending or conv.open_runs or self._pings:
                await self._changed.wait()
            return
        waiting = len(conv.pending) + len(conv.open_runs)
        what = f"{waiting} run(s) still open" if waiting else "no pong"
        self._note(f"timeout: {what} after {self._drain_timeout_s:g} s")
        self.exit_code = EXIT_FAILED

    async def _close(self) -> None:
        self._closing = True
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose(1000)

    # -- events ------------------------------------------------------------

    async def _receive_events(self, scope: trio.CancelScope) -> None:
        while True:
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if not self._closing:
                    code, line = _close_line(exc.reason)
                    self._note(line)
                    if self._conv.resume and code in RECONNECT_CLOSE_CODES:
                        self._conv.reconnect = True
                    self.exit_code = EXIT_OK if code in NORMAL_CLOSE_CODES else EXIT_FAILED
                    scope.cancel()
                return
            self._on_message(message)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._note(f"ignored a binary frame of {len(message)} bytes")
            return
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            event = None
        if isinstance(event, dict) and self._seen_before(event):
            return
        if self._json_mode:
            self._out(message)
        elif isinstance(event, dict):
            self._out(format_event(event))
        else:
            self._out(f"unreadable frame: {_clean(message[:_SHOWN_CHARS])}")
        if isinstance(event, dict):
            self._track(event)

    def _seen_before(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` of the resumed thread was shown already (and note its place)."""
        conv = self._conv
        seq = event.get("thread_seq")
        if not conv.resume or not isinstance(seq, int) or event.get("thread_id") != conv.thread_id:
            return False
        if seq <= conv.last_seq:
            return True
        conv.last_seq = seq
        return False

    def _track(self, event: Mapping[str, Any]) -> None:
        conv = self._conv
        kind = event.get("type")
        run_id = event.get("run_id")
        if kind == "connection_ready":
            conv.connected = True
            if isinstance(event.get("epoch"), str):
                conv.epoch = event["epoch"]
            if self._interactive and not self._json_mode:
                self._note("type a message and press Enter; /help lists the commands")
            return
        if kind == "agent_started" and isinstance(run_id, str):
            if conv.resume and conv.thread_id is None and isinstance(event.get("thread_id"), str):
                conv.thread_id = event["thread_id"]  # the conversation stays in this thread
                conv.last_seq = max(conv.last_seq, event.get("thread_seq") or 0)
            conv.open_runs[run_id] = None
            client_id = event.get("client_id")
            if isinstance(client_id, str):
                conv.pending.pop(client_id, None)
        elif kind == "message_accepted" and event.get("client_id") in conv.pending:
            # One of ours, accepted before a drop: its run is ours to wait for.
            conv.pending.pop(event["client_id"])
            if isinstance(run_id, str):
                conv.open_runs[run_id] = None
        elif kind == "resumed" and isinstance(event.get("live_runs"), list):
            # A run of ours the server no longer runs and whose end we did not see (cut by
            # a crash) will not end: stop waiting for it.
            live = set(event["live_runs"])
            for gone in [run for run in conv.open_runs if run not in live]:
                self._note(f"run {_clean(gone)} ended while disconnected")
                del conv.open_runs[gone]
        elif kind == "duplicate_message" and isinstance(event.get("client_id"), str):
            # Sent before a drop and accepted then: its run's events come with the resume.
            conv.pending.pop(event["client_id"], None)
        elif kind in TERMINAL_TYPES and isinstance(run_id, str):
            conv.open_runs.pop(run_id, None)
        elif kind == "error" and isinstance(event.get("ref"), str):
            conv.pending.pop(event["ref"], None)  # a refused message starts no run
        elif kind == "pong" and self._pings:
            self._pings -= 1
        else:
            return
        self._changed.set()
        self._changed = trio.Event()


def _valid_token(token: str) -> bool:
    return bool(token) and all(ch.isprintable() and not ch.isspace() for ch in token)


@attrs.frozen
class _Target:
    """Where a ``ws://`` or ``wss://`` URL points."""

    url: str
    host: str
    port: int
    resource: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> _Target:
        """Raises ValueError for anything but a ws/wss URL with a host."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("the scheme must be ws:// or wss://")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)  # .port raises ValueError if invalid
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url=url, host=parts.hostname, port=port, resource=resource, tls=tls)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"

    async def open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        """The TCP (and TLS) connection; raises OSError or trio.BrokenResourceError.

        Cancellation: propagates; a connection already open is closed first.
        """
        if not self.tls:
            return await trio.open_tcp_stream(self.host, self.port)
        stream = await trio.open_ssl_over_tcp_stream(
            self.host, self.port, ssl_context=ssl.create_default_context(), https_compatible=True
        )
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream


async def _chat_over(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    target: _Target,
    token: str,
    make_client: Callable[[trio_websocket.WebSocketConnection], _ChatClient],
    lines: _LineReader,
    note: Output,
) -> int:
    """The WebSocket handshake on ``stream``, then the chat; the exit code.

    Cancellation: propagates; ``stream`` is left for the caller to close.
    """
    ws: trio_websocket.WebSocketConnection | None = None
    client: _ChatClient | None = None
    rejection: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(CONNECT_TIMEOUT_S):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    target.host_header,
                    target.resource,
                    subprotocols=[PROTOCOL],
                    extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
                )
            if ws is None:
                note(f"error: timed out connecting to {_clean(target.url)}")
            else:
                client = make_client(ws)
                await client.run(lines)
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await ws.aclose(1000)  # no-op unless /quit or end of input closed it
            nursery.cancel_scope.cancel()  # trio-websocket's reader task
    except* trio_websocket.ConnectionRejected as group:
        first = group.exceptions[0]
        if isinstance(first, trio_websocket.ConnectionRejected):
            rejection = _rejection(first)
    except* LocalProtocolError:
        # trio-websocket answers a ping that arrives during the closing handshake,
        # and its reader task dies of it (wsproto sends nothing but the close then).
        # Hypercorn pings right after the upgrade, so `enclave chat < /dev/null`
        # hits it. The close frame is out: the chat ended as it was going to.
        if ws is None or ws.closed is None:
            raise
    if rejection is not None:
        note(rejection)
        return EXIT_FAILED
    return EXIT_FAILED if client is None else client.exit_code


async def _connect_and_chat(
    target: _Target,
    token: str,
    make_client: Callable[[trio_websocket.WebSocketConnection], _ChatClient],
    lines: _LineReader,
    note: Output,
) -> int:
    """Connect to ``target`` and chat; the exit code. Cancellation: the socket is closed."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            stream = await target.open_stream()
    except trio.TooSlowError:
        note(f"error: timed out connecting to {_clean(target.url)}")
        return EXIT_FAILED
    except OSError as exc:
        note(f"error: cannot connect to {_clean(target.url)}: {_clean(_os_reason(exc))}")
        return EXIT_FAILED
    except trio.BrokenResourceError as exc:  # the TLS handshake failed
        reason = _clean(str(exc.__cause__ or exc))
        note(f"error: cannot connect to {_clean(target.url)}: TLS: {reason}")
        return EXIT_FAILED
    try:
        return await _chat_over(stream, target, token, make_client, lines, note)
    finally:
        # trio-websocket leaves the stream open when the server refuses the
        # handshake (ConnectionRejected); owning the stream closes it always.
        await trio.aclose_forcefully(stream)


async def _chat_resuming(
    target: _Target,
    token: str,
    make_client: Callable[[trio_websocket.WebSocketConnection], _ChatClient],
    conversation: _Conversation,
    lines: _LineReader,
    note: Output,
) -> int:
    """Chat, reconnecting while the conversation asks to (``resume``); the exit code.

    Cancellation: propagates at once.
    """
    failures = 0
    while True:
        code = await _connect_and_chat(target, token, make_client, lines, note)
        conv = conversation
        dropped = conv.reconnect or (conv.resume and conv.connected and code == EXIT_FAILED)
        if conv.connected:
            failures = 0  # in a row: this connection worked
        idle = lines.ended and not (conv.pending or conv.open_runs)
        if not dropped or failures >= len(RECONNECT_DELAYS_S) or idle:
            return code
        conv.reconnect = conv.connected = False
        note(f"reconnecting in {RECONNECT_DELAYS_S[failures]:g} s to resume the thread")
        await trio.sleep(RECONNECT_DELAYS_S[failures])
        failures += 1


async def run_chat(
    url: str,
    token: str,
    *,
    json_mode: bool = False,
    thread_id: str | None = None,
    resume: bool = False,
    stdin: trio.abc.ReceiveStream | None = None,
    out: Output | None = None,
    err: Output | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
) -> int:
    """Chat with the server at ``url`` until input ends, ``/quit`` or the server closes.

    ``stdin`` defaults to a duplicate of file descriptor 0, ``out`` to printing
    on standard output. Diagnostics (errors, ``closed:``, help, notes) go to
    ``err``, which defaults to ``out`` -- or, in ``json_mode``, to standard
    error, so that standard output carries nothing but the frames' JSON.

    With ``resume``, the conversation keeps one thread (``thread_id`` or the first the
    server names) shown from its start, and a dropped connection (no close frame, or
    1001/1011/1012/1013/1014) is reopened and resumed, up to
    ``len(RECONNECT_DELAYS_S)`` times in a row.

    Returns the exit code: 0 after a normal end (end of input once every run
    this client started has ended, ``/quit``, a server close 1000/1001), 1 if
    the connection fails or is refused, the server closes with another code,
    or runs are still open ``drain_timeout_s`` after the end of input; 2 for
    an unusable URL or token.

    Cancellation: propagates at once; the connection is dropped without a
    closing handshake and a stdin descriptor this function duplicated is closed.
    Ctrl-C does the same and raises a plain KeyboardInterrupt (never a group).
    """
    emit = out or _print_out
    note = err or (_print_err if json_mode else emit)
    if not _valid_token(token):
        note("error: the token must be one line without spaces")
        return EXIT_USAGE
    try:
        target = _Target.parse(url)
    except ValueError as exc:
        note(f"error: invalid URL {_clean(url)!r}: {_clean(str(exc))}")
        return EXIT_USAGE
    owned: trio.lowlevel.FdStream | None = None
    if stdin is None:
        try:
            owned = trio.lowlevel.FdStream(os.dup(0))
        except OSError as exc:
            note(f"error: cannot read standard input: {exc.strerror}")
            return EXIT_FAILED
    source = owned or stdin
    assert source is not None
    interactive = owned is not None and os.isatty(0)

    conversation = _Conversation(thread_id=thread_id, resume=resume)

    def make_client(ws: trio_websocket.WebSocketConnection) -> _ChatClient:
        return _ChatClient(
            ws,
            json_mode=json_mode,
            conversation=conversation,
            out=emit,
            note=note,
            drain_timeout_s=drain_timeout_s,
            interactive=interactive,
        )

    try:
        return await _chat_resuming(
            target, token, make_client, conversation, _LineReader(source), note
        )
    except* KeyboardInterrupt:
        # Ctrl-C raised inside a task arrives wrapped in the nurseries' exception
        # groups; callers (``enclave chat`` returns 130) expect the plain exception.
        raise KeyboardInterrupt from None
    finally:
        if owned is not None:
            owned.close()
