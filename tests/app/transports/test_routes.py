"""The HTTP answers both transports share: the chat page and ``POST /dev/token``.

The replies are tested as values, then over real sockets on both transports (``serve()``
on 127.0.0.1, an ephemeral port); the lean transport's own body reading (it parses
HTTP itself) gets hand-written requests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import h11
import pytest
import trio
from joserfc.jwk import ECKey

from app import Settings
from app.services._build import build_verifier
from app.transports._routes import (
    DEV_TOKEN_MAX_BODY,
    PAGE_CSP,
    dev_token_reply,
    page_reply,
)
from app.web import TokenMinter, load_static

if TYPE_CHECKING:
    from tests.app.conftest import E2E, LiveServer

SECRET: Final = b"routes-test-secret-0123456789abcdefghij"
WAIT_S: Final = 5.0


@pytest.fixture(params=["asgi", "lean"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def minter(**overrides: Any) -> TokenMinter:
    return TokenMinter.from_settings(Settings(jwt_secret=SECRET, **overrides))


# -- the replies -----------------------------------------------------------------------


def test_page_reply_headers() -> None:
    static = load_static(ws_path="/ws", dev_tokens=False)
    reply = page_reply(static, "/app.js")
    assert reply is not None
    assert reply.status == 200
    headers = dict(reply.headers)
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["content-security-policy"] == PAGE_CSP
    assert PAGE_CSP.startswith("default-src 'self'; connect-src 'self' ws: wss:;")
    assert headers["x-content-type-options"] == "nosniff"
    assert page_reply(static, "/index.html") is None


def test_dev_token_reply_defaults_to_dev_user() -> None:
    now = time.time()
    for body in (b"", b"  ", b"{}"):
        reply = dev_token_reply(minter(), body, now)
        assert reply.status == 200
        answer = json.loads(reply.body)
        assert answer["sub"] == "dev-user"
        assert dict(reply.headers)["cache-control"] == "no-store"
        claims = build_verifier(Settings(jwt_secret=SECRET)).verify(answer["token"], now=now)
        assert claims.subject == "dev-user"


def test_dev_token_reply_for_a_named_user_with_audience() -> None:
    reply = dev_token_reply(minter(audience="chat"), b'{"sub": "carol"}', time.time())
    token = json.loads(reply.body)["token"]
    settings = Settings(jwt_secret=SECRET, audience="chat")
    assert build_verifier(settings).verify(token, now=time.time()).subject == "carol"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{", "the body is not JSON"),
        (b"[" * 100_000, "the body is not JSON"),
        (b"[]", 'the body must be a JSON object with at most "sub"'),
        (b'{"sub": "a", "exp": 1}', 'the body must be a JSON object with at most "sub"'),
        (b'{"sub": 7}', "sub must be a string of 1 to 256 characters"),
        (b'{"sub": ""}', "sub must be a string of 1 to 256 characters"),
        (json.dumps({"sub": "x" * 257}).encode(), "sub must be a string of 1 to 256 characters"),
    ],
)
def test_dev_token_reply_refuses_bad_bodies(body: bytes, detail: str) -> None:
    reply = dev_token_reply(minter(), body[:DEV_TOKEN_MAX_BODY], time.time())
    assert reply.status == 400
    assert json.loads(reply.body) == {"error": "invalid_request", "detail": detail}


def test_dev_token_reply_refuses_a_large_body() -> None:
    reply = dev_token_reply(minter(), b" " * (DEV_TOKEN_MAX_BODY + 1), time.time())
    assert reply.status == 413


def test_dev_token_reply_when_the_key_cannot_sign(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    public = TokenMinter.from_settings(Settings(jwks=str(path), algorithms=("ES256",)))
    reply = dev_token_reply(public, b"", time.time())
    assert reply.status == 500
    assert json.loads(reply.body)["error"] == "cannot_sign"


# -- over real sockets, both transports -------------------------------------------------


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(
    live: LiveServer,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """One HTTP/1.1 request, parsed with h11; read up to the end of the response."""
    conn = h11.Connection(h11.CLIENT)
    sent = [("Host", f"{live.host}:{live.port}"), ("Connection", "close"), *headers]
    if body or method == "POST":
        sent.append(("Content-Length", str(len(body))))
    head: h11.Response | None = None
    data = b""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(live.host, live.port)
        async with stream:
            out = conn.send(h11.Request(method=method, target=target, headers=sent))
            if body:
                out += conn.send(h11.Data(data=body))
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65_536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    assert head is not None
    found = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
    return Response(head.status_code, found, data)


async def test_the_page_is_served(e2e: E2E) -> None:
    async with e2e.server(path="/chat") as live:
        page = await request(live, "GET", "/")
        assert page.status == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["content-security-policy"] == PAGE_CSP
        assert b'data-ws-path="/chat"' in page.body
        assert b'data-dev-tokens="off"' in page.body
        script = await request(live, "GET", "/app.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert b"chat.v1" in script.body
        style = await request(live, "GET", "/app.css")
        assert style.headers["content-type"] == "text/css; charset=utf-8"
        head = await request(live, "HEAD", "/")
        assert head.status == 200
        assert head.body == b""
        assert (await request(live, "POST", "/")).status == 405


async def test_dev_token_is_a_404_unless_dev_tokens(e2e: E2E) -> None:
    async with e2e.server() as live:
        assert (await request(live, "POST", "/dev/token", b"{}")).status == 404


async def test_a_dev_token_opens_a_connection(e2e: E2E) -> None:
    async with e2e.server(dev_tokens=True) as live:
        page = await request(live, "GET", "/")
        assert b'data-dev-tokens="on"' in page.body
        headers = (("Content-Type", "application/json"),)
        minted = await request(live, "POST", "/dev/token", b'{"sub": "carol"}', headers)
        assert minted.status == 200
        assert minted.headers["content-type"] == "application/json"
        token = json.loads(minted.body)["token"]
        async with live.chat(token) as chat:
            assert chat.ready["user_id"] == "carol"
        refused = await request(live, "POST", "/dev/token", b'{"sub": ""}')
        assert refused.status == 400
        assert (await request(live, "GET", "/dev/token")).status == 405
        too_big = await request(live, "POST", "/dev/token", b" " * (DEV_TOKEN_MAX_BODY + 1))
        assert too_big.status == 413


# -- the lean transport reads bodies itself ----------------------------------------------


async def raw_exchange(live: LiveServer, *chunks: bytes) -> bytes:
    """Send ``chunks`` (a pause between them); what the server answers until it closes."""
    answer = b""
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(live.host, live.port)
        async with stream:
            for i, chunk in enumerate(chunks):
                if i:
                    await trio.sleep(0.05)
                await stream.send_all(chunk)
            await stream.send_eof()
            while data := await stream.receive_some(65_536):
                answer += data
    return answer


def post_head(*headers: str) -> bytes:
    lines = ["POST /dev/token HTTP/1.1", "Host: x", *headers, "", ""]
    return "\r\n".join(lines).encode()


@pytest.mark.parametrize("transport", ["lean"])
async def test_lean_reads_a_body_that_arrives_later(e2e: E2E) -> None:
    async with e2e.server(dev_tokens=True) as live:
        body = b'{"sub": "late"}'
        answer = await raw_exchange(live, post_head(f"Content-Length: {len(body)}"), body)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"sub": "late"' in answer
        empty = await raw_exchange(live, post_head())
        assert b'"sub": "dev-user"' in empty


@pytest.mark.parametrize("transport", ["lean"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (("Transfer-Encoding: chunked",), b"411"),
        (("Content-Length: -1",), b"400"),
        (("Content-Length: 1", "Content-Length: 1"), b"400"),
        ((f"Content-Length: {DEV_TOKEN_MAX_BODY + 1}",), b"413"),
    ],
)
async def test_lean_refuses_bodies_it_will_not_read(
    e2e: E2E, headers: tuple[str, ...], status: bytes
) -> None:
    async with e2e.server(dev_tokens=True) as live:
        answer = await raw_exchange(live, post_head(*headers))
        assert answer.startswith(b"HTTP/1.1 " + status)


@pytest.mark.parametrize("transport", ["lean"])
async def test_lean_drops_a_body_that_never_comes(e2e: E2E) -> None:
    async with e2e.server(dev_tokens=True, open_timeout_s=0.2) as live:
        # The peer leaves before its body is complete: no answer.
        assert await raw_exchange(live, post_head("Content-Length: 10"), b"{}") == b""
        # The peer stays but sends nothing more: dropped after the open timeout.
        with trio.fail_after(WAIT_S):
            stream = await trio.open_tcp_stream(live.host, live.port)
            async with stream:
                await stream.send_all(post_head("Content-Length: 10"))
                assert await stream.receive_some(65_536) == b""
