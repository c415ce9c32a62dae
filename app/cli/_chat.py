"""``enclave chat``: the interactive terminal client of chat.v1, over trio-websocket.

Lines read from standard input become ``user_message`` frames (slash commands
aside); every frame the server sends is printed, either as one readable line
(:func:`format_event`) or, with ``json_mode``, as its raw JSON text. At the end
of input the client waits for the runs it started to end, then closes 1000, so
``echo hello | enclave chat ...`` is a one-shot command.
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

HELP: Final = (
    "commands:",
    "  /cancel [run_id]  cancel a run (default: the latest one still running;",
    "                    a unique prefix of a running run's id is enough)",
    "  /ping             check the connection (the server answers pong)",
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

    def _take(self, end: int, consumed: int) -> str:
        raw = bytes(self._buffer[:end])
        del self._buffer[:consumed]
        self._scanned = 0
        return raw.decode("utf-8", "replace").removesuffix("\r")


@request_scoped
class _ChatClient:
    """One ``run_chat`` call's connection and what it knows about its runs."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        *,
        json_mode: bool,
        thread_id: str | None,
        out: Output,
        note: Output,
        drain_timeout_s: float,
        interactive: bool,
    ) -> None:
        self._ws = ws
        self._json_mode = json_mode
        self._thread_id = thread_id
        self._out = out
        self._note = note
        self._drain_timeout_s = drain_timeout_s
        self._interactive = interactive
        self._sent = 0
        #: client_ids of messages sent that have neither started a run nor been refused.
        self._pending: set[str] = set()
        #: run_ids started and not ended yet, oldest first (a dict as an ordered set).
        self._open_runs: dict[str, None] = {}
        #: pings sent and not answered yet.
        self._pings = 0
        self._changed = trio.Event()
        self._closing = False
        self.exit_code = EXIT_OK

    async def run(self, stdin: trio.abc.ReceiveStream) -> None:
        """Read input and receive events until either ends the chat; sets ``exit_code``.

        Cancellation: both tasks stop at once; the connection is left as it is.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_events, nursery.cancel_scope)
            nursery.start_soon(self._read_input, _LineReader(stdin), nursery.cancel_scope)

    # -- input -------------------------------------------------------------

    async def _read_input(self, lines: _LineReader, scope: trio.CancelScope) -> None:
        try:
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
        else:
            if name != "/help":
                self._note(f"unknown command {_clean(name)}")
            for line in HELP:
                self._note(line)
        return True

    async def _send_message(self, text: str) -> None:
        self._sent += 1
        client_id = f"c{self._sent}"
        message = {"type": "user_message", "text": text, "client_id": client_id}
        if self._thread_id is not None:
            message["thread_id"] = self._thread_id
        self._pending.add(client_id)  # before sending: the reply may come at once
        await self._send(message)

    async def _cancel(self, wanted: str | None) -> None:
        if wanted is None:
            if not self._open_runs:
                self._note("no run to cancel")
                return
            run_id = next(reversed(self._open_runs))
        else:
            matches = [r for r in self._open_runs if r.startswith(wanted)]
            run_id = matches[0] if len(matches) == 1 and wanted not in self._open_runs else wanted
        await self._send({"type": "cancel", "run_id": run_id})

    async def _send(self, message: Mapping[str, str]) -> None:
        await self._ws.send_message(json.dumps(message, ensure_ascii=False))

    async def _wait_for_runs(self) -> None:
        """Until every message sent has started a run (or was refused), every run has
        ended and every ping has its pong -- at most ``drain_timeout_s``."""
        with trio.move_on_after(self._drain_timeout_s):
            while self._pending or self._open_runs or self._pings:
                await self._changed.wait()
            return
        waiting = len(self._pending) + len(self._open_runs)
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
        if self._json_mode:
            self._out(message)
        elif isinstance(event, dict):
            self._out(format_event(event))
        else:
            self._out(f"unreadable frame: {_clean(message[:_SHOWN_CHARS])}")
        if isinstance(event, dict):
            self._track(event)

    def _track(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        run_id = event.get("run_id")
        if kind == "connection_ready" and self._interactive and not self._json_mode:
            self._note("type a message and press Enter; /help lists the commands")
        if kind == "agent_started" and isinstance(run_id, str):
            self._open_runs[run_id] = None
            client_id = event.get("client_id")
            if isinstance(client_id, str):
                self._pending.discard(client_id)
        elif kind in TERMINAL_TYPES and isinstance(run_id, str):
            self._open_runs.pop(run_id, None)
        elif kind == "error" and isinstance(event.get("ref"), str):
            self._pending.discard(event["ref"])  # a refused message starts no run
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
    stdin: trio.abc.ReceiveStream,
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
                await client.run(stdin)
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
    stdin: trio.abc.ReceiveStream,
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
        return await _chat_over(stream, target, token, make_client, stdin, note)
    finally:
        # trio-websocket leaves the stream open when the server refuses the
        # handshake (ConnectionRejected); owning the stream closes it always.
        await trio.aclose_forcefully(stream)


async def run_chat(
    url: str,
    token: str,
    *,
    json_mode: bool = False,
    thread_id: str | None = None,
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

    def make_client(ws: trio_websocket.WebSocketConnection) -> _ChatClient:
        return _ChatClient(
            ws,
            json_mode=json_mode,
            thread_id=thread_id,
            out=emit,
            note=note,
            drain_timeout_s=drain_timeout_s,
            interactive=interactive,
        )

    try:
        return await _connect_and_chat(target, token, make_client, source, note)
    except* KeyboardInterrupt:
        # Ctrl-C raised inside a task arrives wrapped in the nurseries' exception
        # groups; callers (``enclave chat`` returns 130) expect the plain exception.
        raise KeyboardInterrupt from None
    finally:
        if owned is not None:
            owned.close()
