"""Shared fixtures of the audit tests: our real server and small deliberately leaky ones.

Tests take the ``kit`` fixture (an :class:`AuditKit`) for the servers to audit and a
small audit configuration signed with the same secret. Under ``--import-mode=importlib``
test modules cannot import this file at run time, so they reach it through the fixture
and import :class:`AuditKit` for type checking only
(``if TYPE_CHECKING: from tests.isolation.audit.conftest import AuditKit``).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Final

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from app import RunningServer, Settings, serve
from isolation.audit._plan import AuditConfig

SECRET: Final = b"audit-test-secret-0123456789abcdef"


@asynccontextmanager
async def our_server(**overrides: Any) -> AsyncIterator[str]:
    """Our real server on 127.0.0.1:ephemeral; yields its WebSocket URL."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "jwt_secret": SECRET}
    values.update(overrides)
    settings = Settings(**values)
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve, settings)
        yield server.ws_url + settings.path
        nursery.cancel_scope.cancel()


def config(url: str, **overrides: Any) -> AuditConfig:
    values: dict[str, Any] = {
        "url": url,
        "users": 20,
        "runs": 3,
        "jwt_secret": SECRET,
        "seed": 7,
        "think_ms": 10.0,
        "timeout_s": 25.0,
        "frame_timeout_s": 8.0,
    }
    values.update(overrides)
    return AuditConfig(**values)


def _subject(request: WebSocketRequest) -> str:
    """The token's sub, unverified: these servers are about leaks, not auth."""
    for name, value in request.headers:
        if name.lower() == b"authorization":
            payload = value.split(b".")[1]
            padded = payload + b"=" * (-len(payload) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
            return str(claims["sub"])
    return "anonymous"


@attrs.define
class LeakyServer:
    """chat.v1 with one leak: ``broadcast``, ``shared-threads`` or ``global-runs``."""

    leak: str  # or "closer": no leak, but it closes each connection 1011 after a run starts
    step_s: float = 0.01
    connections: list[WebSocketConnection] = attrs.field(factory=list)
    threads: dict[str, list[str]] = attrs.field(factory=dict)
    runs: dict[str, tuple[WebSocketConnection, trio.CancelScope]] = attrs.field(factory=dict)

    async def handler(self, request: WebSocketRequest) -> None:
        user = _subject(request)
        ws = await request.accept(subprotocol="chat.v1")
        self.connections.append(ws)
        ready = {"type": "connection_ready", "connection_id": secrets.token_hex(8)}
        await ws.send_message(json.dumps({**ready, "user_id": user, "limits": {"max_runs": 4}}))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        message = json.loads(await ws.get_message())
                    except ConnectionClosed:
                        nursery.cancel_scope.cancel()
                        return
                    await self.on_message(ws, message, nursery)
        finally:
            self.connections.remove(ws)

    async def on_message(
        self, ws: WebSocketConnection, message: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        kind = message["type"]
        if kind == "ping":
            await _send(ws, {"type": "pong"})
        elif kind == "user_message":
            run_id = "run_" + secrets.token_urlsafe(12)
            self.runs[run_id] = (ws, trio.CancelScope())
            nursery.start_soon(self.run, ws, run_id, message)
        elif kind == "cancel":
            owner, scope = self.runs.get(message["run_id"], (None, None))
            if self.leak != "global-runs" and owner is not ws:
                scope = None  # the correct check; "global-runs" forgets it: the IDOR
            if scope is None:
                error = {"code": "run_not_found", "message": "no such run"}
                await _send(ws, {"type": "error", **error, "ref": message["run_id"]})
            else:
                scope.cancel()

    async def run(self, ws: WebSocketConnection, run_id: str, message: dict[str, Any]) -> None:
        thread = message.get("thread_id") or "thr_" + secrets.token_hex(6)
        seq = 0

        async def emit(kind: str, **fields: Any) -> None:
            nonlocal seq
            seq += 1
            event = {"type": kind, **fields, "run_id": run_id, "thread_id": thread, "seq": seq}
            targets = list(self.connections) if self.leak == "broadcast" else [ws]
            for target in targets:
                await _send(target, event)

        history = self.threads.setdefault(thread, [])  # keyed by a thread id users share
        await emit("agent_started", agent="leaky", client_id=message.get("client_id"))
        if self.leak == "closer":
            await ws.aclose(1011, "internal_error")
            return
        text = message["text"]
        with self.runs[run_id][1]:
            await trio.sleep(self.step_s)
            await emit("tool_executing", tool_name="echo", tool_input={"text": text})
            await trio.sleep(self.step_s)
            result = {"text": text, "history": list(history)}
            history.append(text)
            await emit("agent_completed", result=result)
            del self.runs[run_id]
            return
        del self.runs[run_id]
        await emit("run_cancelled", reason="cancelled_by_client")


async def _send(ws: WebSocketConnection, event: Mapping[str, Any]) -> None:
    with suppress(ConnectionClosed):
        await ws.send_message(json.dumps(event))


@asynccontextmanager
async def leaky_server(leak: str, step_s: float = 0.01) -> AsyncIterator[str]:
    leaky = LeakyServer(leak, step_s)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, leaky.handler, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}/ws"
        nursery.cancel_scope.cancel()


@attrs.frozen
class AuditKit:
    """What the audit tests share: the JWT secret, servers to audit, a small config."""

    secret: bytes = SECRET

    def our_server(self, **overrides: Any) -> AbstractAsyncContextManager[str]:
        """Our real server (``Settings`` overrides); yields its WebSocket URL."""
        return our_server(**overrides)

    def leaky_server(self, leak: str, step_s: float = 0.01) -> AbstractAsyncContextManager[str]:
        """A :class:`LeakyServer` with ``leak``; yields its WebSocket URL."""
        return leaky_server(leak, step_s)

    def config(self, url: str, **overrides: Any) -> AuditConfig:
        """A small seeded audit of ``url`` whose tokens are signed with :attr:`secret`."""
        return config(url, **overrides)


@pytest.fixture
def kit() -> AuditKit:
    return AuditKit()
