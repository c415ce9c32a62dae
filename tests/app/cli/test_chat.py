"""``enclave chat``: the readable format, and the client against the real server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from app.auth._tokens import mint_token
from app.cli._chat import HELP, format_event, run_chat
from app.server._serve import RunningServer, serve
from app.services._settings import Settings

SECRET = b"x" * 32
ROOT = Path(__file__).resolve().parents[3]

# -- format_event ----------------------------------------------------------------

RUN = {"run_id": "run_abc", "thread_id": "thr_1"}


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {
                "type": "connection_ready",
                "connection_id": "conn_abcdefghijklmnop",
                "user_id": "alice",
                "protocol": "chat.v1",
                "limits": {"max_runs": 4},
            },
            "connected as alice (conn_abcdefg…) — chat.v1",
        ),
        (
            {"type": "agent_started", "agent": "echo", "client_id": "c1", "seq": 1, **RUN},
            "[run_abc #1] started echo (c1) in thr_1",
        ),
        (
            {"type": "agent_started", "agent": "echo", "seq": 1, **RUN},
            "[run_abc #1] started echo in thr_1",
        ),
        (
            {"type": "agent_thinking", "thought": "I will count…", "seq": 2, **RUN},
            "[run_abc #2] thinking: I will count…",
        ),
        (
            {
                "type": "tool_executing",
                "tool_name": "word_count",
                "tool_input": {"text": "hi"},
                "seq": 3,
                **RUN,
            },
            '[run_abc #3] tool word_count ← {"text": "hi"}',
        ),
        (
            {
                "type": "tool_completed",
                "tool_name": "word_count",
                "results": {"words": 1},
                "seq": 4,
                **RUN,
            },
            '[run_abc #4] tool word_count → {"words": 1}',
        ),
        (
            {"type": "agent_completed", "result": {"text": "hi", "words": 1}, "seq": 5, **RUN},
            '[run_abc #5] completed: {"text": "hi", "words": 1}',
        ),
        (
            {
                "type": "agent_error",
                "error": {"code": "agent_failed", "message": "the agent failed"},
                "seq": 2,
                **RUN,
            },
            "[run_abc #2] error agent_failed: the agent failed",
        ),
        (
            {"type": "run_cancelled", "reason": "cancelled_by_client", "seq": 3, **RUN},
            "[run_abc #3] cancelled (cancelled_by_client)",
        ),
        (
            {
                "type": "error",
                "code": "invalid_message",
                "message": "field 'text' must be a string",
                "field": "text",
            },
            "error invalid_message: field 'text' must be a string (field text)",
        ),
        (
            {"type": "error", "code": "run_not_found", "message": "no such run", "ref": "run_x"},
            "error run_not_found: no such run (ref run_x)",
        ),
        (
            {"type": "error", "code": "c", "message": "m", "ref": "c1", "field": "thread_id"},
            "error c: m (ref c1, field thread_id)",
        ),
        (
            {"type": "error", "code": "rate_limited", "message": "slow down"},
            "error rate_limited: slow down",
        ),
        ({"type": "pong"}, "pong"),
        ({"type": "auth_ok", "expires_at": 0}, "auth ok (expires 1970-01-01 00:00:00 UTC)"),
    ],
)
def test_format_known_events(event: dict[str, Any], line: str) -> None:
    assert format_event(event) == line


@pytest.mark.parametrize(
    ("event", "line"),
    [
        ({"type": "mystery", "x": [1, "é"]}, '{"type":"mystery","x":[1,"é"]}'),
        ({"no_type": True}, '{"no_type":true}'),
        ({"type": 7}, '{"type":7}'),
        ({"type": "agent_thinking"}, "[? #?] thinking: ?"),
        ({"type": "agent_error", "run_id": 5, "seq": "x", "error": "boom"}, "[5 #x] error boom"),
        ({"type": "agent_completed", "run_id": "r", "seq": 9}, "[r #9] completed: null"),
        ({"type": "error"}, "error ?: ?"),
        ({"type": "auth_ok", "expires_at": 1e300}, "auth ok (expires 1e+300)"),
        ({"type": "auth_ok", "expires_at": "soon"}, "auth ok (expires soon)"),
        ({"type": "agent_completed", "run_id": "r", "seq": 1, "result": 10**5000}, None),
    ],
)
def test_format_odd_events(event: dict[str, Any], line: str | None) -> None:
    shown = format_event(event)
    if line is not None:
        assert shown == line
    else:
        assert shown == "[r #1] completed: <int>"


def test_format_escapes_what_would_break_the_terminal() -> None:
    thought = "one\ntwo\r\tthree\x1b[31m red \u2028 \u202e evil \ud800"
    line = format_event({"type": "agent_thinking", "thought": thought, "run_id": "r", "seq": 2})
    assert line == (
        "[r #2] thinking: one\\ntwo\\r\\tthree\\x1b[31m red \\u2028 \\u202e evil \\ud800"
    )
    line.encode("utf-8")  # printable everywhere: no lone surrogate left


SHORT_TEXT = st.text(max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | SHORT_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(SHORT_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
KNOWN_TYPES = (
    "connection_ready",
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
    "agent_error",
    "run_cancelled",
    "error",
    "pong",
    "auth_ok",
)
FIELDS = st.sampled_from(
    (
        "run_id",
        "thread_id",
        "seq",
        "agent",
        "client_id",
        "thought",
        "tool_name",
        "tool_input",
        "results",
        "result",
        "error",
        "reason",
        "code",
        "message",
        "ref",
        "field",
        "user_id",
        "connection_id",
        "protocol",
        "expires_at",
    )
)


def _assert_one_safe_line(line: str) -> None:
    assert isinstance(line, str)
    assert "\n" not in line
    assert "\r" not in line
    line.encode("utf-8")


@given(st.dictionaries(SHORT_TEXT, JSON_VALUES, max_size=6))
def test_format_never_raises_on_any_object(event: dict[str, Any]) -> None:
    _assert_one_safe_line(format_event(event))


@given(
    st.sampled_from(KNOWN_TYPES),
    st.dictionaries(FIELDS | st.text(max_size=3), JSON_VALUES | st.characters(), max_size=8),
)
def test_format_never_raises_on_known_types_with_odd_fields(
    kind: str, fields: dict[str, Any]
) -> None:
    _assert_one_safe_line(format_event({**fields, "type": kind}))


# -- end to end against the real server --------------------------------------------


def _token(subject: str = "alice") -> str:
    return mint_token(secret=SECRET, algorithm="HS256", subject=subject, ttl_s=600, now=time.time())


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[tuple[str, RunningServer]]:
    settings = Settings(**{"host": "127.0.0.1", "port": 0, "jwt_secret": SECRET, **overrides})
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve, settings)
        yield server.ws_url + settings.path, server
        nursery.cancel_scope.cancel()


class Lines:
    """An ``out``/``err`` function that records lines and lets a test wait for one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, fragment: str, count: int = 1) -> list[str]:
        with trio.fail_after(10):
            while True:
                found = [line for line in self.lines if fragment in line]
                if len(found) >= count:
                    return found
                await self._changed.wait()


async def one_shot(url: str, data: bytes, **kwargs: Any) -> tuple[int, list[str]]:
    """``run_chat`` with ``data`` as its whole input; the exit code and the lines printed."""
    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.send_all(data)
    await send.aclose()
    out = Lines()
    with trio.fail_after(20):
        code = await run_chat(url, kwargs.pop("token", _token()), stdin=recv, out=out, **kwargs)
    return code, out.lines


RUN_LINE = re.compile(r"\[(run_[A-Za-z0-9_\-]+) #(\d+)\] (.*)")


async def test_one_shot_prints_the_whole_run() -> None:
    async with running_server() as (url, _):
        code, lines = await one_shot(url, b"hello world\n")
    assert code == 0
    assert re.fullmatch(r"connected as alice \(conn_\S+…\) — chat\.v1", lines[0])
    matches = [RUN_LINE.fullmatch(line) for line in lines[1:]]
    assert all(matches), lines
    runs = {m.group(1) for m in matches if m}
    assert len(runs) == 1
    shown = [(int(m.group(2)), m.group(3)) for m in matches if m]
    assert shown[0][0] == 1
    assert re.fullmatch(r"started echo \(c1\) in thr_\S+", shown[0][1])
    assert shown[1:] == [
        (2, "thinking: I will count the words of your message."),
        (3, 'tool word_count ← {"text": "hello world"}'),
        (4, 'tool word_count → {"words": 2}'),
        (5, 'completed: {"text": "hello world", "words": 2}'),
    ]


async def test_json_mode_prints_raw_frames_only() -> None:
    err = Lines()
    async with running_server() as (url, _):
        code, lines = await one_shot(
            url, b"one two\r\nthree", json_mode=True, thread_id="thread-1", err=err
        )
    assert code == 0
    assert err.lines == []
    events = [json.loads(line) for line in lines]
    assert events[0]["type"] == "connection_ready"
    assert events[0]["user_id"] == "alice"
    by_run: dict[str, list[dict[str, Any]]] = {}
    for event in events[1:]:
        by_run.setdefault(event["run_id"], []).append(event)
    assert len(by_run) == 2
    texts = set()
    for run in by_run.values():
        assert [e["seq"] for e in run] == [1, 2, 3, 4, 5]
        assert [e["type"] for e in run] == [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_completed",
        ]
        assert {e["thread_id"] for e in run} == {"thread-1"}
        texts.add(run[-1]["result"]["text"])
    assert texts == {"one two", "three"}  # CRLF stripped; a last line without newline counts
    assert {run[0]["client_id"] for run in by_run.values()} == {"c1", "c2"}


async def test_bad_token_is_refused_with_401() -> None:
    async with running_server() as (url, _):
        code, lines = await one_shot(url, b"hi\n", token="not-a-jwt")
        err = Lines()
        json_code, json_lines = await one_shot(
            url, b"hi\n", token=_token() + "x", json_mode=True, err=err
        )
    assert code == 1
    assert lines == ["error: 401 invalid_token: malformed token"]
    assert json_code == 1
    assert json_lines == []  # stdout stays pure JSON; the error goes to err
    assert len(err.lines) == 1
    assert err.lines[0].startswith("error: 401 invalid_token")


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, lines = await one_shot(f"ws://127.0.0.1:{port}/ws", b"hi\n")
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot connect to ws://127.0.0.1:{port}/ws: ")
    assert "refused" in lines[0].lower()


@pytest.mark.parametrize(
    ("url", "token", "fragment"),
    [
        ("http://127.0.0.1/ws", "t", "error: invalid URL 'http://127.0.0.1/ws'"),
        ("ws://127.0.0.1:99999/ws", "t", "error: invalid URL"),
        ("ws:///ws", "t", "no host"),
        ("ws://127.0.0.1/ws", "two words", "the token must be one line"),
    ],
)
async def test_unusable_url_or_token_exits_2(url: str, token: str, fragment: str) -> None:
    code, lines = await one_shot(url, b"", token=token)
    assert code == 2
    assert len(lines) == 1
    assert fragment in lines[0]


async def test_commands_ping_help_and_slash_escape() -> None:
    async with running_server() as (url, _):
        code, lines = await one_shot(url, b"/help\n/nope\n   \n//x y\n/ping\n")
        ping_code, ping_lines = await one_shot(url, b"/ping\n")
    assert code == 0
    assert "pong" in lines
    assert ping_code == 0
    assert ping_lines[1:] == ["pong"]  # end of input waits for the answer of a last ping
    assert "unknown command /nope" in lines
    assert lines.count(HELP[0]) == 2  # /help and the unknown command
    assert lines.index(HELP[0]) + len(HELP) <= len(lines)
    started = [line for line in lines if " started " in line]
    assert len(started) == 1  # the blank line was not sent
    assert "(c1)" in started[0]
    assert any(line.endswith('completed: {"text": "/x y", "words": 2}') for line in lines)


async def test_cancel_latest_by_prefix_and_unknown() -> None:
    out = Lines()
    send, recv = trio.testing.memory_stream_one_way_pair()
    async with running_server(agent_delay_ms=200) as (url, _), trio.open_nursery() as nursery:
        codes: list[int] = []

        async def chat() -> None:
            codes.append(await run_chat(url, _token(), stdin=recv, out=out))

        nursery.start_soon(chat)
        await send.send_all(b"/cancel\nfirst run\nsecond run\n")
        await out.wait_for("no run to cancel")
        first, second = (_run_id(line) for line in await out.wait_for(" started echo", count=2))
        await send.send_all(b"/cancel\n")  # the latest run still going: the second
        assert (await out.wait_for("cancelled ("))[0] == (
            f"[{second} #2] cancelled (cancelled_by_client)"
        )
        await send.send_all(f"/cancel {first[:10]}\n".encode())  # a unique prefix
        await out.wait_for(f"[{first} #2] cancelled (cancelled_by_client)")
        await send.send_all(b"/cancel run_nope\n")
        await out.wait_for("error run_not_found: no such run (ref run_nope)")
        await send.aclose()
    assert codes == [0]
    assert not [line for line in out.lines if "completed" in line]


def _run_id(line: str) -> str:
    match = RUN_LINE.fullmatch(line)
    assert match is not None
    return match.group(1)


async def test_quit_does_not_wait_for_runs() -> None:
    out = Lines()
    send, recv = trio.testing.memory_stream_one_way_pair()
    codes: list[int] = []

    async def chat(url: str) -> None:
        codes.append(await run_chat(url, _token(), stdin=recv, out=out))

    async with running_server(agent_delay_ms=2_000) as (url, _):
        with trio.fail_after(5):  # the run alone would take 8 s
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat, url)
                await send.send_all(b"a slow one\n")
                await out.wait_for(" started echo")
                await send.send_all(b"/quit\n")
    assert codes == [0]
    assert not [line for line in out.lines if "completed" in line]


async def test_end_of_input_waits_at_most_the_drain_timeout() -> None:
    async with running_server(agent_delay_ms=500) as (url, _):
        start = trio.current_time()
        code, lines = await one_shot(url, b"slow\n", drain_timeout_s=0.2)
        elapsed = trio.current_time() - start
    assert code == 1
    assert lines[-1] == "timeout: 1 run(s) still open after 0.2 s"
    assert elapsed < 1.5


async def test_server_close_1000_is_a_normal_end() -> None:
    send, recv = trio.testing.memory_stream_one_way_pair()
    out = Lines()
    async with running_server(idle_timeout_s=0.3) as (url, _):
        with trio.fail_after(10):
            code = await run_chat(url, _token(), stdin=recv, out=out)  # input never ends
    assert code == 0
    assert out.lines[-1] == "closed: 1000 idle_timeout"
    await send.aclose()


async def test_server_shutdown_1001_is_a_normal_end() -> None:
    send, recv = trio.testing.memory_stream_one_way_pair()
    out = Lines()
    codes: list[int] = []
    async with running_server() as (url, server), trio.open_nursery() as nursery:

        async def chat() -> None:
            codes.append(await run_chat(url, _token(), stdin=recv, out=out))

        nursery.start_soon(chat)
        await out.wait_for("connected as")
        server.shutdown(0)
        await out.wait_for("closed:")
    assert codes == [0]
    assert out.lines[-1] == "closed: 1001 server_shutdown"
    await send.aclose()


async def test_server_close_with_an_error_code_exits_1() -> None:
    async with running_server(max_message_bytes=64) as (url, _):
        code, lines = await one_shot(url, b"x" * 200 + b"\n")
    assert code == 1
    assert lines[-1].startswith("closed: 1009")


class InterruptedInput(trio.abc.ReceiveStream):
    """Standard input on which the user presses Ctrl-C."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_ctrl_c_raises_a_plain_keyboard_interrupt() -> None:
    # Raised inside the reader task, it would reach `enclave chat` wrapped in
    # exception groups, which its `except KeyboardInterrupt` (exit 130) misses.
    async with running_server() as (url, _):
        with pytest.raises(KeyboardInterrupt):
            await run_chat(url, _token(), stdin=InterruptedInput(), out=Lines())


async def _serve_a_ping_crossing_the_close(stream: trio.SocketStream) -> None:
    """A chat.v1 server whose ping crosses the client's close frame on the wire."""
    ws = WSConnection(ConnectionType.SERVER)
    async with stream:
        while True:
            ws.receive_data(await stream.receive_some(65_536) or None)
            events = list(ws.events())
            if any(isinstance(e, Request) for e in events):
                await stream.send_all(ws.send(AcceptConnection(subprotocol="chat.v1")))
                ready = {"type": "connection_ready", "connection_id": "conn_1", "user_id": "u"}
                await stream.send_all(ws.send(TextMessage(data=json.dumps(ready))))
            for event in events:
                if isinstance(event, CloseConnection):
                    await stream.send_all(b"\x89\x00")  # Ping, sent before the close arrived
                    await stream.send_all(ws.send(event.response()))
                    return


async def test_a_ping_during_the_closing_handshake_is_harmless() -> None:
    # trio-websocket answers it with a pong that wsproto refuses in LOCAL_CLOSING;
    # its reader task dies of LocalProtocolError. Hypercorn pings right after the
    # upgrade, so an immediate end of input (`enclave chat < /dev/null`) met this.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, _serve_a_ping_crossing_the_close, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        code, lines = await one_shot(f"ws://127.0.0.1:{port}/ws", b"")
        nursery.cancel_scope.cancel()
    assert code == 0
    assert len(lines) <= 1  # connection_ready may be dropped by the immediate close


async def test_console_entry_point() -> None:
    async with running_server() as (url, _):
        argv = [sys.executable, "-m", "app", "chat", "--url", url, "--token", _token("bob")]

        def enclave_chat() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                argv, input=b"hi there\n", capture_output=True, timeout=30, cwd=ROOT, check=False
            )

        done = await trio.to_thread.run_sync(enclave_chat)
    stdout = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert stdout.startswith("connected as bob (")
    assert '] completed: {"text": "hi there", "words": 2}' in stdout
    assert done.stderr == b""


async def test_resume_survives_a_server_restart(tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'threads.db'}"
    send, recv = trio.testing.memory_stream_one_way_pair()
    out = Lines()
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        async with running_server(store=store, agent_delay_ms=200) as (url, server):
            port = server.port

            async def chat() -> None:
                codes.append(await run_chat(url, _token(), stdin=recv, out=out, resume=True))

            nursery.start_soon(chat)
            await out.wait_for("connected as")
            await send.send_all(b"hello world\n")
            await out.wait_for("thinking:")
        # The server is gone without a close frame; the same store comes back on its port.
        async with running_server(store=store, port=port):
            await out.wait_for("resumed thr_")
            await send.send_all(b"again\n")
            await out.wait_for("completed:")
            await send.aclose()
    assert codes == [0], "\n".join(out.lines)
    assert any("reconnecting in" in line for line in out.lines)
    cut = [line for line in out.lines if "cancelled (client_gone)" in line]
    assert len(cut) == 1  # the run the restart cut, once, from the log
    shown = [line for line in out.lines if RUN_LINE.fullmatch(line)]
    assert len(shown) == len(set(shown))  # nothing shown twice
    again = [line for line in out.lines if "started echo (c2)" in line]
    assert len(again) == 1
    thread = re.search(r"in (thr_\S+)", again[0])
    assert thread is not None
    assert f"resumed {thread.group(1)} after #" in "\n".join(out.lines)


def test_format_thread_events() -> None:
    assert format_event({"type": "message_accepted", "run_id": "r", "text": "hi"}) == "[r] you: hi"
    assert format_event(
        {"type": "resumed", "thread_id": "t", "recovered": False, "reason": "retention"}
    ) == ("cannot resume t: retention")
    assert (
        format_event(
            {"type": "duplicate_message", "client_id": "c1", "run_id": "r", "thread_id": "t"}
        )
        == "already sent (c1): run r in t"
    )
    assert (
        format_event({"type": "history_page", "thread_id": "t", "events": [{}], "has_more": True})
        == "history of t: 1 event(s) (older ones remain)"
    )
