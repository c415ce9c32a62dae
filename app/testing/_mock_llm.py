"""A local stand-in for an OpenAI-compatible chat-completions server, streaming (SSE).

For the tests of ``--agent openai`` and for the bench's ``--agent llm``: a small Trio
HTTP/1.1 server (h11) on 127.0.0.1 that answers ``POST /v1/chat/completions`` with a
scripted :class:`Reply` (text in pieces, tool calls split across chunks, slow tokens, a
stalled stream, an error status, malformed chunks, a stream that ends early or breaks
off), records every request, and notices at once when a client leaves mid-answer::

    async with open_mock_llm(scripted(tool_reply([("word_count", '{"text": "a b"}')]),
                                      text_reply("Two words."))) as llm:
        ...  # point the agent at llm.base_url; then read llm.requests, llm.aborted

``python -m app.testing._mock_llm --port 0`` serves the bench's answer until a signal.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import h11
import trio

__all__ = [
    "MockLLM",
    "RecordedRequest",
    "Reply",
    "answer_responder",
    "error_reply",
    "malformed_reply",
    "open_mock_llm",
    "scripted",
    "text_reply",
    "tool_reply",
]

JSON = Any
MAX_REQUEST_BYTES: Final = 4 << 20
MODEL: Final = "mock-model"


@attrs.frozen
class RecordedRequest:
    """One request as received: ``headers`` lower-cased, ``body`` parsed JSON (or None)."""

    method: str
    target: str
    headers: dict[str, str]
    body: JSON

    @property
    def messages(self) -> list[dict[str, JSON]]:
        body = self.body if isinstance(self.body, dict) else {}
        messages: list[dict[str, JSON]] = body.get("messages") or []
        return messages


@attrs.frozen
class Reply:
    """One scripted response.

    ``events`` are the SSE ``data`` payloads, one per network write, ``delay_s`` apart
    (and before the first). ``stall_after``: after that many events, send nothing more
    and wait for the client to leave. ``done``: end with ``data: [DONE]``. ``cut``: drop
    the connection instead of ending the body. A ``status`` other than 200 sends ``body``
    as JSON instead of a stream.
    """

    events: tuple[str, ...] = ()
    delay_s: float = 0.0
    stall_after: int | None = None
    done: bool = True
    cut: bool = False
    status: int = 200
    body: JSON = None


def _chunk(delta: dict[str, JSON], finish: str | None = None, model: str = MODEL) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def _usage(prompt: int, completion: int) -> str:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    return json.dumps({"id": "chatcmpl-mock", "model": MODEL, "choices": [], "usage": usage})


def text_reply(
    pieces: str | Sequence[str],
    *,
    delay_s: float = 0.0,
    usage: bool = True,
    finish: bool = True,
    **fields: Any,
) -> Reply:
    """A streamed answer: ``pieces`` one chunk each (a string: one chunk per word)."""
    if isinstance(pieces, str):
        words = pieces.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": piece}) for piece in pieces]
    if finish:
        events.append(_chunk({}, "stop"))
        if usage:
            events.append(_usage(10, len(pieces)))
    return Reply(events=tuple(events), delay_s=delay_s, **fields)


def tool_reply(calls: Sequence[tuple[str, str]], *, piece_chars: int = 4, **fields: Any) -> Reply:
    """Tool calls ``(name, arguments)``, the arguments split in ``piece_chars`` pieces."""
    events = [_chunk({"role": "assistant", "content": None})]
    for index, (name, arguments) in enumerate(calls):
        head = {"index": index, "id": f"call_{index}_mock", "type": "function"}
        events.append(_chunk({"tool_calls": [{**head, "function": {"name": name}}]}))
        for start in range(0, len(arguments), piece_chars):
            piece = arguments[start : start + piece_chars]
            events.append(
                _chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            )
    events.append(_chunk({}, "tool_calls"))
    return Reply(events=tuple(events), **fields)


def error_reply(status: int = 500, message: str = "the mock failed") -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": "server_error"}})


def malformed_reply() -> Reply:
    """A good first chunk, then one that is not JSON."""
    return Reply(events=(_chunk({"content": "Hel"}), '{"choices": [{"delta": '))


Responder = Callable[[RecordedRequest], Reply]


def scripted(*replies: Reply) -> Responder:
    """Answer the n-th request with the n-th reply; past the last, an error 500."""
    remaining = list(replies)

    def respond(_: RecordedRequest) -> Reply:
        return remaining.pop(0) if remaining else error_reply(500, "no more scripted replies")

    return respond


def answer_responder(tokens: int = 8, delay_s: float = 0.005) -> Responder:
    """Every request gets the same answer: ``tokens`` words, ``delay_s`` apart (the bench's)."""
    reply = text_reply(" ".join(f"w{i}" for i in range(tokens)), delay_s=delay_s)
    return lambda _: reply


class MockLLM:
    """The server: :meth:`serve` it in a nursery (or use :func:`open_mock_llm`).

    ``requests`` holds every request in arrival order; ``aborted`` counts the answers
    whose client left before their end (a closed connection seen while streaming).
    """

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[RecordedRequest] = []
        self.aborted = 0
        self.connections = 0
        self.base_url = ""
        self._changed = trio.Event()

    def _record(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[MockLLM], bool]) -> None:
        """Until ``predicate(self)`` holds. Cancellation: just stops waiting (bound it)."""
        while not predicate(self):
            await self._changed.wait()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen; hand ``task_status`` the base URL (``http://host:port/v1``).

        Cancellation: stops listening and drops every connection.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        self.base_url = f"http://{host}:{bound}/v1"
        async with trio.open_nursery() as nursery:
            task_status.started(self.base_url)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            async with stream:
                while await self._exchange(stream, conn):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away or spoke bad HTTP: this connection is over

    async def _exchange(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """One request and its answer; False when the connection is over."""
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65_536)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_BYTES:
                    return False
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed (or PAUSED): nothing more on this connection
                return False
        assert request is not None
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            method=request.method.decode(),
            target=request.target.decode(),
            headers={k.decode().lower(): v.decode() for k, v in request.headers},
            body=parsed,
        )
        self.requests.append(recorded)
        self._record()
        if recorded.method != "POST" or recorded.target != "/v1/chat/completions":
            reply = error_reply(404, "not found")
        elif not isinstance(parsed, dict):
            reply = error_reply(400, "the body is not a JSON object")
        else:
            reply = self.respond(recorded)
        return await self._answer(stream, conn, reply)

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> bool:
        async def send(event: h11.Event) -> None:
            data = conn.send(event)
            if data:
                await stream.send_all(data)

        if reply.status != 200:
            data = json.dumps(reply.body).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
            await send(h11.Response(status_code=reply.status, headers=headers))
            await send(h11.Data(data=data))
            await send(h11.EndOfMessage())
            return conn.our_state is h11.DONE and conn.their_state is h11.DONE
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await send(h11.Response(status_code=200, headers=headers))
        events = [*reply.events, "[DONE]"] if reply.done else list(reply.events)
        for index, data_text in enumerate(events):
            if reply.stall_after is not None and index >= reply.stall_after:
                await self._until_gone(stream, math.inf)
                return False
            if reply.delay_s > 0 and not await self._until_gone(stream, reply.delay_s):
                return False
            await send(h11.Data(data=f"data: {data_text}\n\n".encode()))
        if reply.cut:
            return False  # closed mid-body: the chunked encoding never ends
        await send(h11.EndOfMessage())
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _until_gone(self, stream: trio.SocketStream, seconds: float) -> bool:
        """Wait ``seconds`` unless the client closes first; False (counted) if it did."""
        with trio.move_on_after(seconds):
            try:
                data = await stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.aborted += 1
                self._record()
                return False
            # A client sends nothing while it reads an answer; if it does, we stop waiting.
        return True


@asynccontextmanager
async def open_mock_llm(respond: Responder, host: str = "127.0.0.1") -> AsyncIterator[MockLLM]:
    """A :class:`MockLLM` serving on ``host``:ephemeral for the body of the ``async with``."""
    llm = MockLLM(respond)
    async with trio.open_nursery() as nursery:
        await nursery.start(llm.serve, host, 0)
        try:
            yield llm
        finally:
            nursery.cancel_scope.cancel()


async def _main(host: str, port: int, responder: Responder) -> None:
    llm = MockLLM(responder)
    # The receiver first: a signal sent as soon as the URL is read must find it.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(llm.serve, host, port)
            print(url, flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app.testing._mock_llm``: serve the bench's answer; print the base URL."""
    parser = argparse.ArgumentParser(prog="python -m app.testing._mock_llm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=8, help="words per answer (default 8)")
    parser.add_argument(
        "--token-delay-ms", type=float, default=5.0, help="time between chunks (default 5)"
    )
    args = parser.parse_args(argv)
    responder = answer_responder(args.tokens, args.token_delay_ms / 1000)
    trio.run(_main, args.host, args.port, responder)
    return 0


if __name__ == "__main__":  # pragma: no cover - the bench runs it as a process
    sys.exit(main())
