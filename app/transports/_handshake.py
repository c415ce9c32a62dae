"""The opening-handshake decision: Origin, subprotocol, token. No I/O.

Every rejection happens before the upgrade, as an HTTP response with a JSON body.
"""

from __future__ import annotations

import json
import math

import attrs

from ..auth._tokens import AuthError, TokenVerifier, VerifiedClaims, extract_token
from ..core._codes import PROTOCOL
from ..services._admission import Refused
from ..services._settings import Settings
from ..session._transport import HandshakeInfo

__all__ = ["Accept", "Reject", "evaluate_handshake", "refused_for_user", "unavailable"]


@attrs.frozen
class Accept:
    claims: VerifiedClaims
    carrier: str
    subprotocol: str | None


@attrs.frozen
class Reject:
    """An HTTP response refusing the upgrade."""

    status: int
    error: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "detail": self.detail}).encode()

    def all_headers(self) -> tuple[tuple[str, str], ...]:
        return (("content-type", "application/json"), *self.headers)


def unavailable(detail: str, retry_after_s: int) -> Reject:
    """503 for a draining or full server."""
    return Reject(503, "unavailable", detail, (("retry-after", str(retry_after_s)),))


def refused_for_user(refused: Refused, settings: Settings) -> Reject:
    """429 for a user who opens connections too fast or was just closed for flooding."""
    retry = (("retry-after", str(max(1, math.ceil(refused.retry_after_s)))),)
    if refused.cooling_down:
        detail = (
            f"closed 1008 rate_limited less than {settings.abuse_cooldown_s:g} s ago; "
            "wait before reconnecting"
        )
        return Reject(429, "cooling_down", detail, retry)
    detail = (
        f"at most {settings.connect_rate_per_s:g} new connections per second per user "
        f"(burst {settings.connect_burst})"
    )
    return Reject(429, "too_many_connections", detail, retry)


def evaluate_handshake(
    info: HandshakeInfo, *, settings: Settings, verifier: TokenVerifier, now: float
) -> Accept | Reject:
    """Decide one handshake; ``now`` is wall-clock epoch seconds."""
    origin = info.header("origin")
    # Browsers always send Origin; non-browser clients (no CSWSH risk) may omit it.
    allowed = {o.lower() for o in settings.allowed_origins}
    if allowed and origin is not None and origin.lower() not in allowed:
        return Reject(403, "forbidden_origin", "Origin is not allowed")
    offered = [p for p in info.subprotocols if not p.startswith("bearer.")]
    subprotocol: str | None = None
    if info.subprotocols:
        if PROTOCOL not in offered:
            return Reject(
                400, "unsupported_subprotocol", f"offer the {PROTOCOL} subprotocol or none"
            )
        subprotocol = PROTOCOL
    try:
        source = extract_token(
            headers=info.headers,
            subprotocols=info.subprotocols,
            query_string=info.query_string,
            allow_query=settings.allow_query_token,
        )
        claims = verifier.verify(source.token, now=now)
    except AuthError as exc:
        challenge = f'Bearer error="{exc.error}"'
        return Reject(exc.status, exc.error, exc.detail, (("www-authenticate", challenge),))
    return Accept(claims, source.carrier, subprotocol)
