"""The chat.v1 subset every peer speaks: handshake check, frames, echo agent. No I/O.

The subset: ``connection_ready`` first; ``user_message`` → ``agent_started``,
``agent_thinking``, ``tool_executing``, ``tool_completed``, ``agent_completed``
(``run_id``/``thread_id``/``seq`` on each; ``result`` = ``{text, words}``); ``ping`` →
``pong``; anything else → an ``error``. Tokens are checked at the handshake with the
server's own verifier (HS256) and refused with 401 (400 for a malformed carrier).
Frames are encoded exactly as the server encodes them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from app.auth._tokens import AuthConfig, AuthError, TokenVerifier, extract_token

__all__ = [
    "PROTOCOL",
    "Accepted",
    "PeerArgs",
    "PeerAuth",
    "Rejected",
    "Reply",
    "Run",
    "connection_ready",
    "handle_text",
    "parse_args",
    "run_steps",
]

PROTOCOL: Final = "chat.v1"
THOUGHT: Final = "I will count the words of your message."
LIMITS: Final = {
    "max_message_bytes": 65536,
    "max_runs": 4,
    "rate_per_s": 1e6,
    "rate_burst": 1000000,
    "idle_timeout_s": 300.0,
    "ping_interval_s": 20.0,
}


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@attrs.frozen
class Accepted:
    user_id: str
    subprotocol: str | None


@attrs.frozen
class Rejected:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


@attrs.frozen(eq=False)
class PeerAuth:
    """The handshake check: one token (header, ``bearer.`` subprotocol or query), HS256."""

    verifier: TokenVerifier

    @classmethod
    def from_secret(cls, secret: bytes) -> PeerAuth:
        return cls(TokenVerifier.from_secret(secret, AuthConfig(algorithms=("HS256",))))

    def check(
        self, headers: Iterable[tuple[str, str]], subprotocols: Sequence[str], query: str
    ) -> Accepted | Rejected:
        offered = [p for p in subprotocols if not p.startswith("bearer.")]
        if subprotocols and PROTOCOL not in offered:
            return _reject(400, "unsupported_subprotocol", "offer chat.v1 or none", ())
        try:
            source = extract_token(
                headers=tuple((k.lower(), v) for k, v in headers),
                subprotocols=tuple(subprotocols),
                query_string=query,
                allow_query=True,
            )
            claims = self.verifier.verify(source.token, now=time.time())
        except AuthError as exc:
            challenge = (("www-authenticate", f'Bearer error="{exc.error}"'),)
            return _reject(exc.status, exc.error, exc.detail, challenge)
        return Accepted(claims.subject, PROTOCOL if subprotocols else None)


def _reject(status: int, error: str, detail: str, extra: tuple[tuple[str, str], ...]) -> Rejected:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Rejected(status, body, (("content-type", "application/json"), *extra))


def connection_ready(user_id: str) -> str:
    return _encode(
        {
            "type": "connection_ready",
            "connection_id": "conn_" + secrets.token_urlsafe(16),
            "user_id": user_id,
            "limits": LIMITS,
            "protocol": PROTOCOL,
        }
    )


@attrs.frozen
class Run:
    run_id: str
    thread_id: str
    text: str
    client_id: str | None


@attrs.frozen
class Reply:
    """The answer to one client frame: a frame to send now, or a run to start."""

    frame: str | None = None
    run: Run | None = None


_PONG: Final = Reply(frame='{"type":"pong"}')


def _error(code: str, message: str) -> Reply:
    return Reply(frame=_encode({"type": "error", "code": code, "message": message}))


def handle_text(text: str) -> Reply:
    """The answer to one text frame of the client."""
    try:
        obj = json.loads(text)
    except ValueError:
        return _error("invalid_json", "invalid JSON")
    if not isinstance(obj, dict):
        return _error("invalid_message", "message must be a JSON object")
    kind = obj.get("type")
    if kind == "ping":
        return _PONG
    if kind != "user_message":
        return _error("unknown_type", f"unknown message type {kind!r}")
    body = obj.get("text")
    if not isinstance(body, str) or not body:
        return _error("invalid_message", "field 'text' is required")
    thread_id = obj.get("thread_id")
    client_id = obj.get("client_id")
    return Reply(
        run=Run(
            run_id="run_" + secrets.token_urlsafe(12),
            thread_id=thread_id
            if isinstance(thread_id, str)
            else "thr_" + secrets.token_urlsafe(12),
            text=body,
            client_id=client_id if isinstance(client_id, str) else None,
        )
    )


def _stamped(run: Run, seq: int, fields: dict[str, Any]) -> str:
    fields["run_id"] = run.run_id
    fields["thread_id"] = run.thread_id
    fields["seq"] = seq
    return _encode(fields)


def run_steps(run: Run) -> list[str]:
    """The five frames of a run of the echo agent, in order.

    Send the first at once, and wait the agent delay before each of the others, as
    the server's echo agent does.
    """
    words = len(run.text.split())
    started: dict[str, Any] = {"type": "agent_started", "agent": "echo"}
    if run.client_id is not None:
        started["client_id"] = run.client_id
    return [
        _stamped(run, 1, started),
        _stamped(run, 2, {"type": "agent_thinking", "thought": THOUGHT}),
        _stamped(
            run,
            3,
            {"type": "tool_executing", "tool_name": "word_count", "tool_input": {"text": run.text}},
        ),
        _stamped(
            run,
            4,
            {"type": "tool_completed", "tool_name": "word_count", "results": {"words": words}},
        ),
        _stamped(run, 5, {"type": "agent_completed", "result": {"text": run.text, "words": words}}),
    ]


@attrs.frozen
class PeerArgs:
    host: str
    port: int
    secret: bytes
    agent_delay_s: float
    loop: str  # "auto", "asyncio" or "uvloop" (asyncio peers)


def parse_args(prog: str, argv: Sequence[str] | None = None) -> PeerArgs:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--jwt-secret", default=None, help="HS256 secret [BENCH_JWT_SECRET or ENCLAVE_JWT_SECRET]"
    )
    parser.add_argument("--agent-delay-ms", type=float, default=0.0)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    secret = (
        args.jwt_secret
        or os.environ.get("BENCH_JWT_SECRET")
        or os.environ.get("ENCLAVE_JWT_SECRET")
    )
    if not secret:
        parser.error("--jwt-secret is required")
    return PeerArgs(args.host, args.port, secret.encode(), args.agent_delay_ms / 1000, args.loop)


def loop_factory(choice: str) -> tuple[str, Any]:
    """(name, factory for asyncio.Runner) of the event loop ``choice``."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None
