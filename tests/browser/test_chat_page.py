"""The chat page at ``/`` in a real headless Chromium (Debian's), driven by Playwright.

Two kinds of test:

- against a real server (``python -m app serve`` on 127.0.0.1, both transports): the
  page and its headers, a dev token, a run streamed live, cancel, refused tokens, close
  codes in words, production without dev tokens;
- against a scripted server (Playwright's WebSocket routing, the page itself served
  from the package by the same code as the transports): what today's server cannot
  send yet — threads, history, resume, ``agent_delta``, unknown events — and the
  reconnection after an unexpected close.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
from playwright.sync_api import Page, Route, WebSocketRoute, expect

from app import mint_token
from app.transports._routes import PAGE_CSP, page_reply
from app.web import load_static
from tests.browser._harness import SECRET

if TYPE_CHECKING:
    from tests.browser._harness import Server

#: Where the scripted server "lives": nothing listens there, Playwright answers.
FAKE_ORIGIN: Final = "http://127.0.0.1:9"
FIVE: Final = ("agent_started", "agent_thinking", "tool_executing", "tool_completed")


def token(sub: str = "alice", *, secret: str = SECRET, ttl_s: float = 600.0) -> str:
    return mint_token(
        secret=secret.encode(), algorithm="HS256", subject=sub, ttl_s=ttl_s, now=time.time()
    )


def connect_with_dev_token(page: Page, server: Server) -> None:
    page.goto(server.url)
    page.click("#dev-token")
    expect(page.locator("#token")).not_to_have_value("")
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("Connected as dev-user")


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


# -- a real server ------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy(
    page: Page, dev_server: Server
) -> None:
    response = page.goto(dev_server.url)
    assert response is not None
    assert response.status == 200
    headers = response.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["content-security-policy"] == PAGE_CSP
    assert PAGE_CSP.startswith("default-src 'self'; connect-src 'self' ws: wss:")
    for path, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        file = page.request.get(dev_server.url + path)
        assert file.status == 200
        assert file.headers["content-type"].startswith(kind)
        assert file.headers["content-security-policy"] == PAGE_CSP
    expect(page).to_have_title("trio-enclave chat")
    expect(page.locator("#dev-token")).to_be_visible()


def test_a_run_is_rendered_live_event_by_event(page: Page, dev_server: Server) -> None:
    connect_with_dev_token(page, dev_server)
    send(page, "hello big world")
    run = page.locator("#log .run")
    expect(run.locator('[data-type="agent_thinking"]')).to_contain_text("I will count the words")
    # Streamed: the run is still going when its first steps are on the page.
    expect(run.locator(".run-status")).to_have_text("running")
    expect(run.locator('[data-type="agent_completed"]')).to_have_count(1)
    steps = run.locator(".steps li")
    expect(steps).to_have_count(5)
    assert [steps.nth(i).get_attribute("data-type") for i in range(5)] == [
        *FIVE,
        "agent_completed",
    ]
    expect(steps.nth(0)).to_have_text("started echo")
    expect(steps.nth(2)).to_have_text('tool word_count ← {"text":"hello big world"}')
    expect(steps.nth(3)).to_have_text('tool word_count → {"words":3}')
    expect(run.locator(".answer")).to_have_text('{"text":"hello big world","words":3}')
    expect(run.locator(".run-status")).to_have_text("completed")
    expect(run.locator(".cancel")).to_have_count(0)
    expect(page.locator("#thread-label")).to_contain_text("Thread thr_")


def test_a_live_run_is_cancelled_with_its_button(page: Page, dev_server: Server) -> None:
    connect_with_dev_token(page, dev_server)
    send(page, "cancel me")
    run = page.locator("#log .run")
    expect(run.locator('[data-type="agent_started"]')).to_have_count(1)
    run.locator(".cancel").click()
    expect(run.locator('[data-type="run_cancelled"]')).to_have_text("Cancelled.")
    expect(run.locator(".run-status")).to_have_text("cancelled")
    expect(run.locator('[data-type="agent_completed"]')).to_have_count(0)


def test_dev_token_for_a_named_user(page: Page, dev_server: Server) -> None:
    page.goto(dev_server.url)
    page.fill("#dev-sub", "carol")
    page.click("#dev-token")
    expect(page.locator("#notices")).to_contain_text('A dev token for "carol"')
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("Connected as carol")


def test_bad_tokens_are_explained_in_words(page: Page, dev_server: Server) -> None:
    page.goto(dev_server.url)
    page.click("#connect")
    expect(page.locator("#notices")).to_contain_text("Enter a token first")
    page.fill("#token", "not-a-token")
    page.click("#connect")
    expect(page.locator("#notices")).to_contain_text("That is not a token")
    expired = mint_token(
        secret=SECRET.encode(), algorithm="HS256", subject="a", ttl_s=60, now=time.time() - 3600
    )
    page.fill("#token", expired)
    page.click("#connect")
    expect(page.locator("#notices")).to_contain_text("This token expired")
    page.fill("#token", token(secret="another-secret-0123456789abcdefghijklmn"))
    page.click("#connect")
    expect(page.locator("#notices .error").last).to_contain_text(
        "The server refused the connection before it opened"
    )
    expect(page.locator("#status")).to_have_text("Not connected.")


def test_production_has_no_dev_token_and_closes_are_explained(
    page: Page, prod_server: Server
) -> None:
    assert page.request.post(prod_server.url + "dev/token", data="{}").status == 404
    page.goto(prod_server.url)
    expect(page.locator("#dev-token")).to_have_count(0)
    page.fill("#token", token("dave"))
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("Connected as dave")
    # Nothing sent: the server's idle timeout closes the connection, 1000 idle_timeout.
    expect(page.locator("#notices .error")).to_contain_text("(idle timeout)")
    expect(page.locator("#status")).to_have_text("Not connected.")


def test_reload_mid_run_shows_the_rest_of_the_answer(page: Page, dev_server: Server) -> None:
    connect_with_dev_token(page, dev_server)
    send(page, "survive a reload")
    expect(page.locator('#log [data-type="agent_thinking"]')).to_have_count(1)
    page.reload()
    expect(page.locator("#status")).to_contain_text("Connected as dev-user")
    expect(page.locator("#log li.user")).to_have_text("survive a reload")
    if dev_server.transport == "asgi":
        # Quart-Trio ends a connection's runs with it: the page shows how the run ended.
        expect(page.locator('#log [data-type="run_cancelled"]')).to_have_count(1, timeout=2_500)
        return
    # The run has about a second left: the rest of it, then the whole of it, is shown.
    expect(page.locator('#log [data-type="agent_completed"]')).to_have_count(1, timeout=2_500)
    expect(page.locator("#log .answer")).to_contain_text("survive a reload")


# -- a scripted server ----------------------------------------------------------------


@attrs.define
class ScriptedServer:
    """Answers the page's WebSocket instead of a server; keeps what the page sent."""

    page: Page
    ready: dict[str, Any]
    sockets: list[WebSocketRoute] = attrs.field(factory=list)
    received: list[dict[str, Any]] = attrs.field(factory=list)
    on_message: Callable[[ScriptedServer, dict[str, Any]], None] | None = None

    def accept(self, ws: WebSocketRoute) -> None:
        self.sockets.append(ws)
        ws.on_message(lambda text: self._received(text))
        ws.send(json.dumps(self.ready))

    def _received(self, text: str | bytes) -> None:
        message = json.loads(text)
        self.received.append(message)
        if self.on_message is not None:
            self.on_message(self, message)

    def send(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.sockets[-1].send(json.dumps(event))

    def wait_for(self, kind: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th message of type ``kind`` the page sent; waits up to 5 s."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            found = [m for m in self.received if m["type"] == kind]
            if len(found) >= count:
                return found[count - 1]
            self.page.wait_for_timeout(20)  # lets Playwright deliver the page's messages
        raise AssertionError(f"the page sent no {kind!r} (#{count}): {self.received}")


def ready_event(**extra: Any) -> dict[str, Any]:
    return {
        "type": "connection_ready",
        "connection_id": "conn_scripted",
        "user_id": "alice",
        "limits": {"max_runs": 4, "idle_timeout_s": 300.0, "max_message_bytes": 65536},
        "protocol": "chat.v1",
        **extra,
    }


def run_event(kind: str, seq: int, thread_seq: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "run_id": "run_1",
        "thread_id": "thr_1",
        "seq": seq,
        "thread_seq": thread_seq,
        **fields,
    }


def scripted(page: Page, **ready: Any) -> ScriptedServer:
    """Serve the page from the package at :data:`FAKE_ORIGIN` and script its WebSocket."""
    static = load_static(ws_path="/ws", dev_tokens=False)

    def fulfil(route: Route) -> None:
        path = route.request.url.removeprefix(FAKE_ORIGIN).split("?")[0]
        reply = page_reply(static, path)
        if reply is None:
            route.fulfill(status=404, body="")
        else:
            route.fulfill(status=200, headers=dict(reply.headers), body=reply.body)

    server = ScriptedServer(page, ready_event(**ready))
    page.route(f"{FAKE_ORIGIN}/**", fulfil)
    # A lambda: Playwright stores attributes on a bound method's instance (slotted here).
    page.route_web_socket("ws://127.0.0.1:9/ws", lambda ws: server.accept(ws))
    return server


def open_scripted(page: Page, server: ScriptedServer) -> None:
    page.goto(f"{FAKE_ORIGIN}/")
    page.fill("#token", token())
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("Connected as alice")


def test_deltas_and_unknown_events_render(page: Page) -> None:
    server = scripted(page)
    open_scripted(page, server)
    send(page, "stream please")
    client_id = server.wait_for("user_message")["client_id"]
    server.send(
        run_event("agent_started", 1, 2, agent="writer", client_id=client_id),
        run_event("agent_delta", 2, 3, delta="Hello, "),
        run_event("agent_delta", 3, 4, delta="world."),
        run_event("agent_mood", 4, 5, mood="cheerful"),
        {"type": "server_news", "text": "hello"},
    )
    run = page.locator("#log .run")
    expect(run.locator(".answer")).to_have_text("Hello, world.")
    expect(run.locator('[data-type="agent_mood"]')).to_have_text('agent_mood: {"mood":"cheerful"}')
    expect(page.locator('#log li.event[data-type="server_news"]')).to_contain_text('"hello"')
    server.send(run_event("agent_completed", 5, 6, result={"text": "Hello, world."}))
    expect(run.locator(".run-status")).to_have_text("completed")
    # The streamed text stays the answer.
    expect(run.locator(".answer")).to_have_text("Hello, world.")
    # The run after a message goes into the thread the server named.
    send(page, "again")
    assert server.wait_for("user_message", 2)["thread_id"] == "thr_1"


def test_a_server_without_threads_is_asked_nothing(page: Page) -> None:
    server = scripted(page)  # no epoch in connection_ready
    open_scripted(page, server)
    expect(page.locator("#threads-note")).to_have_text("This server keeps no thread history.")
    send(page, "hi")
    client_id = server.wait_for("user_message")["client_id"]
    assert {m["type"] for m in server.received} == {"user_message"}
    server.send(run_event("agent_started", 1, 2, agent="echo", client_id=client_id))
    run = page.locator("#log .run")
    expect(run.locator(".cancel")).to_have_count(1)
    # Such a server cancels a closed connection's runs: the page says so.
    server.sockets[-1].close(code=1011, reason="internal_error")
    expect(run.locator(".run-status")).to_have_text("lost with the connection")
    expect(run.locator(".cancel")).to_have_count(0)


def test_unknown_type_answers_to_thread_requests_are_tolerated(page: Page) -> None:
    def refuse(server: ScriptedServer, message: dict[str, Any]) -> None:
        if message["type"] == "threads":
            text = f"unknown message type {message['type']!r}"
            server.send({"type": "error", "code": "unknown_type", "message": text})

    server = scripted(page, epoch="e1")
    server.on_message = refuse
    open_scripted(page, server)
    server.wait_for("threads")
    expect(page.locator("#threads-note")).to_have_text("This server keeps no thread history.")
    expect(page.locator("#notices .error")).to_have_count(0)


def test_thread_list_history_and_resume(page: Page) -> None:
    server = scripted(page, epoch="e1")
    open_scripted(page, server)
    assert server.wait_for("threads") == {"type": "threads", "limit": 20}
    server.send(
        {
            "type": "thread_list",
            "threads": [
                {"thread_id": "thr_1", "last_seq": 5, "updated_at": 1_700_000_000.0},
                {"thread_id": "thr_2", "last_seq": 2, "updated_at": 1_700_000_100.0},
            ],
        }
    )
    expect(page.locator("#threads button")).to_have_count(2)
    page.locator('#threads button[data-thread-id="thr_1"]').click()
    assert server.wait_for("history") == {"type": "history", "thread_id": "thr_1", "limit": 50}
    user = {"type": "message_accepted", "thread_id": "thr_1", "thread_seq": 1, "run_id": "run_1"}
    server.send(
        {
            "type": "history_page",
            "thread_id": "thr_1",
            "has_more": False,
            "events": [
                {**user, "text": "old question", "client_id": "c9"},
                run_event("agent_started", 1, 2, agent="echo", client_id="c9"),
                run_event("agent_thinking", 2, 3, thought="pondering"),
            ],
        }
    )
    expect(page.locator("#log li.user")).to_have_text("old question")
    expect(page.locator('#log [data-type="agent_thinking"]')).to_contain_text("pondering")
    # The run had not ended: resume after the last event shown brings the rest.
    assert server.wait_for("resume") == {"type": "resume", "thread_id": "thr_1", "after": 3}
    server.send(
        run_event("agent_thinking", 2, 3, thought="pondering"),  # a repeat: shown once
        run_event("tool_executing", 3, 4, tool_name="t", tool_input=None),
        {"type": "resumed", "thread_id": "thr_1", "recovered": True},
        run_event("agent_completed", 4, 5, result="done"),
    )
    run = page.locator("#log .run")
    expect(run.locator(".answer")).to_have_text("done")
    expect(run.locator(".steps li")).to_have_count(4)
    expect(page.locator("#thread-label")).to_have_text("Thread thr_1")


def test_unexpected_close_reconnects_and_resumes(page: Page) -> None:
    server = scripted(page, epoch="e1")
    open_scripted(page, server)
    server.wait_for("threads")
    send(page, "long question")
    client_id = server.wait_for("user_message")["client_id"]
    server.send(
        run_event("agent_started", 1, 2, agent="echo", client_id=client_id),
        run_event("agent_thinking", 2, 3, thought="pondering"),
    )
    expect(page.locator('#log [data-type="agent_thinking"]')).to_have_count(1)
    server.sockets[-1].close(code=1011, reason="internal_error")
    expect(page.locator("#notices .warn")).to_contain_text("internal error")
    expect(page.locator("#notices .warn")).to_contain_text("Reconnecting in")
    status = page.locator("#log .run .run-status")
    expect(status).to_have_text("connection lost: resuming after reconnect")
    # The log is still on the page: resume straight after the last event seen.
    assert server.wait_for("resume") == {"type": "resume", "thread_id": "thr_1", "after": 3}
    assert len(server.sockets) == 2
    server.send(
        {"type": "resumed", "thread_id": "thr_1", "recovered": True},
        run_event("agent_completed", 3, 4, result="answer"),
    )
    expect(page.locator("#log .run .answer")).to_have_text("answer")


def test_reload_asks_for_the_history_then_resumes(page: Page) -> None:
    server = scripted(page, epoch="e1")
    open_scripted(page, server)
    send(page, "before the reload")
    client_id = server.wait_for("user_message")["client_id"]
    server.send(run_event("agent_started", 1, 7, agent="echo", client_id=client_id))
    expect(page.locator('#log [data-type="agent_started"]')).to_have_count(1)
    page.reload()
    # Reconnected with the stored token; the stored thread's history first.
    assert server.wait_for("history") == {"type": "history", "thread_id": "thr_1", "limit": 50}
    started = run_event("agent_started", 1, 7, agent="echo", client_id=client_id)
    user = {"type": "message_accepted", "thread_id": "thr_1", "thread_seq": 6, "run_id": "run_1"}
    server.send(
        {
            "type": "history_page",
            "thread_id": "thr_1",
            "has_more": True,
            "events": [{**user, "text": "before the reload", "client_id": client_id}, started],
        }
    )
    expect(page.locator("#log li.event")).to_contain_text("Earlier events")
    expect(page.locator("#log li.user")).to_have_text("before the reload")
    expect(page.locator('#log [data-type="agent_started"]')).to_have_count(1)
    assert server.wait_for("resume") == {"type": "resume", "thread_id": "thr_1", "after": 7}


def test_resume_refused_is_explained(page: Page) -> None:
    server = scripted(page, epoch="e2")
    open_scripted(page, server)
    send(page, "hello")
    client_id = server.wait_for("user_message")["client_id"]
    server.send(run_event("agent_started", 1, 2, agent="echo", client_id=client_id))
    expect(page.locator("#thread-label")).to_have_text("Thread thr_1")
    server.sockets[-1].close(code=1001, reason="server_shutdown")
    server.wait_for("resume")
    server.send(
        {"type": "resumed", "thread_id": "thr_1", "recovered": False, "reason": "unknown_thread"}
    )
    expect(page.locator("#notices .warn").last).to_contain_text("does not know this thread")
    expect(page.locator("#thread-label")).to_contain_text("New thread")
