"""The mock model server, spoken to with plain HTTP/1.1 (h11) over real sockets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import h11
import trio

from app.testing import (
    MockLLM,
    Reply,
    answer_responder,
    error_reply,
    malformed_reply,
    open_mock_llm,
    scripted,
    text_reply,
    tool_reply,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def post(
    llm: MockLLM, body: Any = BODY, target: str = "/v1/chat/completions", method: str = "POST"
) -> tuple[int, bytes]:
    """One request on a fresh connection; the status and the whole body."""
    port = int(llm.base_url.rsplit(":", 1)[1].split("/")[0])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", "x"), ("content-length", str(len(data))), ("authorization", "Bearer k")]
    status, received = 0, b""
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            request = h11.Request(method=method, target=target, headers=headers)
            await stream.send_all(conn.send(request) + conn.send(h11.Data(data=data)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65_536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, received


def data_of(body: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in body.decode().split("\n\n") if line]


async def test_a_text_reply_is_a_stream_of_chunks() -> None:
    async with open_mock_llm(scripted(text_reply("a b"))) as llm:
        status, body = await post(llm)
    assert status == 200
    events = data_of(body)
    assert events[-1] == "[DONE]"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:4]]
    assert contents == ["", "a", " b", None]
    assert json.loads(events[4])["usage"]["total_tokens"] == 12
    (request,) = llm.requests
    assert (request.method, request.target, request.body) == ("POST", "/v1/chat/completions", BODY)
    assert request.headers["authorization"] == "Bearer k"
    assert request.messages == BODY["messages"]


async def test_tool_calls_are_split() -> None:
    async with open_mock_llm(scripted(tool_reply([("f", '{"a": 1}')], piece_chars=3))) as llm:
        _, body = await post(llm)
    pieces = [json.loads(e)["choices"][0]["delta"] for e in data_of(body)[:-1]]
    assert pieces[1]["tool_calls"][0]["function"] == {"name": "f"}
    args = "".join(p["tool_calls"][0]["function"]["arguments"] for p in pieces[2:-1])
    assert args == '{"a": 1}'


async def test_errors_and_scripts() -> None:
    replies = (error_reply(503, "busy"), malformed_reply(), text_reply(["x"], done=False))
    async with open_mock_llm(scripted(*replies)) as llm:
        assert await post(llm) == (503, b'{"error": {"message": "busy", "type": "server_error"}}')
        assert data_of((await post(llm))[1])[-2] == '{"choices": [{"delta": '
        assert "[DONE]" not in data_of((await post(llm))[1])
        status, body = await post(llm)
        assert status == 500
        assert b"no more scripted replies" in body
        assert (await post(llm, target="/v1/other"))[0] == 404
        assert (await post(llm, method="GET", body=b""))[0] == 404
        assert (await post(llm, body=b"[1]"))[0] == 400
        assert (await post(llm, body=b"{not json"))[0] == 400
    assert len(llm.requests) == 8


async def test_a_client_that_leaves_is_noticed() -> None:
    async with open_mock_llm(scripted(Reply(events=("1",), stall_after=0))) as llm:
        with trio.move_on_after(0.2):
            await post(llm)
        with trio.fail_after(1):
            await llm.wait_for(lambda m: m.aborted == 1)
    assert llm.connections == 1


async def test_the_bench_answer() -> None:
    async with open_mock_llm(answer_responder(tokens=3, delay_s=0.001)) as llm:
        first, second = await post(llm), await post(llm)
    assert first == second
    texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in data_of(first[1])[1:4]]
    assert texts == ["w0", " w1", " w2"]


def test_the_command_line() -> None:
    command = [sys.executable, "-m", "app.testing._mock_llm", "--port", "0", "--tokens", "2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("http://127.0.0.1:")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
