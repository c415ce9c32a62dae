"""The per-connection user context: built only from verified token claims."""

from __future__ import annotations

import secrets

import attrs

from isolation import request_scoped

from ._tokens import VerifiedClaims

__all__ = ["UserContext", "new_connection_id"]


def new_connection_id() -> str:
    """A fresh, unguessable connection id (128 random bits)."""
    return "conn_" + secrets.token_urlsafe(16)


@request_scoped
@attrs.frozen
class UserContext:
    """Who is on this connection. Immutable; one per connection, never shared.

    ``expires_at`` is the token's ``exp`` (epoch seconds); it is replaced by a new
    context, never mutated, when the client re-authenticates.
    """

    user_id: str
    connection_id: str
    expires_at: float
    token_carrier: str

    @classmethod
    def from_claims(cls, claims: VerifiedClaims, *, carrier: str) -> UserContext:
        """The only way the server builds a context: from claims the verifier accepted."""
        return cls(
            user_id=claims.subject,
            connection_id=new_connection_id(),
            expires_at=claims.expires_at,
            token_carrier=carrier,
        )

    def renewed(self, claims: VerifiedClaims) -> UserContext:
        """This context with the expiry of a re-authentication for the same subject."""
        if claims.subject != self.user_id:
            raise ValueError("subject mismatch")
        return attrs.evolve(self, expires_at=claims.expires_at)
