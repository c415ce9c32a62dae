"""What both transports answer over HTTP: ``/health``, ``/ready``, ``/metrics``, admission,
rejections.

The ASGI transport (``transports/asgi/_server.py``) and the lean transport
(``transports/lean/_server.py``) turn
an :class:`HttpReply` into their own response object or bytes; status, headers and
body come from here, so the two cannot drift apart. No I/O.
"""

from __future__ import annotations

import json
import types
from typing import Any, Final

import attrs
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..services._services import ServerLifecycle, Services
from ..session._transport import HandshakeInfo
from ._handshake import Accept, Reject, evaluate_handshake, refused_for_user, unavailable

__all__ = [
    "JSON_HEADERS",
    "HttpReply",
    "admit",
    "decide",
    "health_reply",
    "json_reply",
    "metrics_reply",
    "ready_reply",
    "rejection_reply",
]

JSON_HEADERS: Final = (("content-type", "application/json"),)
# What a handshake rejection's ``error`` counts as in ``enclave_handshakes_refused_total``;
# every other error is an AuthError's (missing, malformed, expired, bad signature ...).
_REFUSAL_OF_ERROR: Final = types.MappingProxyType(
    {
        "forbidden_origin": "origin",
        "unsupported_subprotocol": "subprotocol",
        "too_many_connections": "rate",
        "cooling_down": "cooldown",
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


def decide(
    info: HandshakeInfo, services: Services, lifecycle: ServerLifecycle, now: float
) -> Accept | Reject:
    """The handshake decision: Origin, subprotocol, token, then the user's own budget.

    The token is checked at the services' wall clock; the user's connect budget and
    abuse cool-down (429) at ``now``, a monotonic clock in seconds.
    """
    decision = evaluate_handshake(
        info, settings=services.settings, verifier=services.verifier, now=services.wall_clock()
    )
    if isinstance(decision, Accept):
        refused = lifecycle.subjects.admit(decision.claims.subject, now)
        if refused is None:
            return decision
        decision = refused_for_user(refused, services.settings)
    lifecycle.metrics.refused(_REFUSAL_OF_ERROR.get(decision.error, "token"))
    return decision
