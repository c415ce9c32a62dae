"""What both transports answer over HTTP: ``/health``, ``/ready``, ``/metrics``, the chat
page (``/``, ``/app.js``, ``/app.css``), ``POST /dev/token`` (dev mode only), admission,
rejections.

The ASGI transport (``transports/asgi/_server.py``) and the lean transport
(``transports/lean/_server.py``) turn
an :class:`HttpReply` into their own response object or bytes; status, headers and
body come from here, so the two cannot drift apart. No I/O.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import attrs
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..auth._context import UserContext
from ..auth._tokens import MAX_SUBJECT_CHARS
from ..services._admission import Refusal, Refused, Ticket
from ..services._services import ServerLifecycle, Services
from ..services._settings import Settings
from ..session._session import run_session
from ..session._transport import HandshakeInfo, Transport
from ..web._dev_token import DEV_SUBJECT, TokenMinter
from ..web._static import StaticFiles
from ._handshake import Accept, Reject, evaluate_handshake, refused_for_user, unavailable

__all__ = [
    "DEV_TOKEN_MAX_BODY",
    "DEV_TOKEN_PATH",
    "JSON_HEADERS",
    "PAGE_CSP",
    "HttpReply",
    "admit",
    "decide",
    "dev_token_reply",
    "health_reply",
    "json_reply",
    "metrics_reply",
    "page_reply",
    "ready_reply",
    "refused_reply",
    "rejection_reply",
    "run_counted_session",
]

JSON_HEADERS: Final = (("content-type", "application/json"),)
#: The page's scripts, styles and connections are its own origin's; nothing inline,
#: nothing from another host, no plugins, no framing.
PAGE_CSP: Final = (
    "default-src 'self'; connect-src 'self' ws: wss:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = (
    ("cache-control", "no-cache"),
    ("content-security-policy", PAGE_CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
DEV_TOKEN_PATH: Final = "/dev/token"
#: The largest ``POST /dev/token`` body read; larger gets 413.
DEV_TOKEN_MAX_BODY: Final = 4096
# What a handshake rejection's ``error`` counts as in ``enclave_handshakes_refused_total``;
# every other error is an AuthError's (missing, malformed, expired, bad signature ...).
# A user's own refusals count as their ``Refusal``'s value.
_REFUSAL_OF_ERROR: Final = types.MappingProxyType(
    {
        "forbidden_origin": "origin",
        "unsupported_subprotocol": "subprotocol",
    }
)


@attrs.frozen
class HttpReply:
    """One HTTP response: status, headers (names lower-case) and body."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS


def json_reply(body: dict[str, Any], status: int) -> HttpReply:
    """``body`` as ``application/json``."""
    return HttpReply(status, json.dumps(body).encode())


def health_reply() -> HttpReply:
    """``GET /health``: the process is up."""
    return json_reply({"status": "ok"}, 200)


def ready_reply(lifecycle: ServerLifecycle) -> HttpReply:
    """``GET /ready``: 200 while serving, 503 once the drain has begun."""
    if lifecycle.draining.is_set():
        return json_reply({"status": "draining"}, 503)
    return json_reply({"status": "ready"}, 200)


def page_reply(static: StaticFiles, path: str) -> HttpReply | None:
    """``GET`` of one of the page's files, or None if ``path`` is not one of them."""
    file = static.get(path)
    if file is None:
        return None
    return HttpReply(200, file.body, (("content-type", file.content_type), *_PAGE_HEADERS))


def _bad_dev_request(detail: str) -> HttpReply:
    return json_reply({"error": "invalid_request", "detail": detail}, 400)


def dev_token_reply(minter: TokenMinter, body: bytes, now: float) -> HttpReply:
    """``POST /dev/token`` (only served in dev mode): ``{"token": ...}`` for the body's
    optional ``sub`` (default ``dev-user``), valid from ``now`` (wall clock).

    The body is empty or a JSON object; anything else is a 400 ``invalid_request``.
    A key that cannot sign (a JWKS of public keys) answers 500 ``cannot_sign``.
    """
    if len(body) > DEV_TOKEN_MAX_BODY:
        return json_reply({"error": "too_large", "detail": "the body is too large"}, 413)
    request: Any = {}
    if body.strip():
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return _bad_dev_request("the body is not JSON")
    if not isinstance(request, dict) or request.keys() - {"sub"}:
        return _bad_dev_request('the body must be a JSON object with at most "sub"')
    subject = request.get("sub", DEV_SUBJECT)
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_CHARS:
        return _bad_dev_request(f"sub must be a string of 1 to {MAX_SUBJECT_CHARS} characters")
    try:
        token = minter.mint(subject, now=now)
    except ValueError:
        detail = "the configured key cannot sign tokens"
        return json_reply({"error": "cannot_sign", "detail": detail}, 500)
    return attrs.evolve(
        json_reply({"token": token, "sub": subject}, 200),
        headers=(*JSON_HEADERS, ("cache-control", "no-store")),
    )


def metrics_reply(lifecycle: ServerLifecycle) -> HttpReply:
    """``GET /metrics``: every metric in the Prometheus text format."""
    return HttpReply(200, lifecycle.metrics.render(), (("content-type", CONTENT_TYPE_LATEST),))


def rejection_reply(rejection: Reject) -> HttpReply:
    """A refused handshake as an HTTP response."""
    return HttpReply(rejection.status, rejection.body(), rejection.all_headers())


def admit(lifecycle: ServerLifecycle, retry_after_s: int) -> Reject | None:
    """Count one more connection, or the 503 refusing it.

    Runs first, before any crypto: a full or draining server spends nothing on a
    handshake. When it returns ``None`` the caller owns one ``lifecycle.release()``.
    """
    if lifecycle.try_admit():
        return None
    draining = lifecycle.draining.is_set()
    lifecycle.metrics.refused("draining" if draining else "full")
    return unavailable("server is draining" if draining else "server is full", retry_after_s)


def refused_reply(refused: Refused, settings: Settings) -> Reject:
    """The answer to a handshake refused for its user (429), or for want of the shared
    admission counters (503)."""
    if refused.reason is Refusal.UNAVAILABLE:
        return unavailable("cannot check this user's limits now", settings.retry_after_s)
    if refused.reason is Refusal.TOO_MANY_OPEN:
        detail = (
            f"too many connections for this user: at most {settings.max_connections_per_user} "
            "open at once; close one before opening another"
        )
        retry = (("retry-after", str(max(1, math.ceil(refused.retry_after_s)))),)
        return Reject(429, "too_many_open_connections", detail, retry)
    return refused_for_user(refused, settings)


@asynccontextmanager
async def decide(
    info: HandshakeInfo, services: Services, lifecycle: ServerLifecycle
) -> AsyncIterator[Accept | Reject]:
    """The handshake decision: Origin, subprotocol, token, then the user's own limits.

    The token is checked at the services' wall clock; the user's cool-down, open
    connections and connect budget by ``lifecycle.admission``. An accepted connection
    holds its place in its user's count for the block, released when the block ends,
    however it ends (cancellation included). Cancellation while deciding: nothing is held.
    """
    decision = evaluate_handshake(
        info, settings=services.settings, verifier=services.verifier, now=services.wall_clock()
    )
    del info  # the block may last a connection's life: its headers are not kept for it
    if isinstance(decision, Accept):
        admitted = await lifecycle.admission.admit(decision.claims.subject)
        if isinstance(admitted, Ticket):
            try:
                yield decision
            finally:
                await lifecycle.admission.release(admitted)
            return
        lifecycle.metrics.refused(admitted.reason.value)
        yield refused_reply(admitted, services.settings)
        return
    lifecycle.metrics.refused(_REFUSAL_OF_ERROR.get(decision.error, "token"))
    yield decision


class _Closing(Transport, Protocol):
    def closed_with(self) -> tuple[int | None, str | None]:
        """The close the server started, for the metrics (both transports have it)."""
        ...


async def run_counted_session(
    transport: _Closing, context: UserContext, services: Services, lifecycle: ServerLifecycle
) -> None:
    """``run_session``, counted in the server's metrics: open while it runs, then how it
    closed. Cancellation: as ``run_session``; the counts are kept either way."""
    metrics = lifecycle.metrics
    metrics.connections_open += 1
    try:
        await run_session(transport, context, services, lifecycle)
    finally:
        metrics.connections_open -= 1
        metrics.closed(*transport.closed_with())
