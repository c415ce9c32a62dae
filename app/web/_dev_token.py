"""Tokens signed with the server's own key: the page's dev button and ``enclave token``.

The key is read once (:meth:`TokenMinter.from_settings`) and signing is
:func:`~app.auth._tokens.mint_token`'s, so a minted token is exactly what the
server's verifier accepts (algorithm, audience, issuer).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from ..auth._tokens import load_jwks, mint_token
from ..services._build import read_secret
from ..services._settings import Settings

__all__ = ["DEV_SUBJECT", "DEV_TOKEN_TTL_S", "TokenMinter"]

#: The lifetime of a token from ``POST /dev/token`` (as the ``--dev`` banner's).
DEV_TOKEN_TTL_S: Final = 24 * 3600.0
#: The ``sub`` of a dev token when the request names none.
DEV_SUBJECT: Final = "dev-user"


@attrs.frozen
class TokenMinter:
    """Signs tokens with the configured key: the HS secret, or a JWKS's private key."""

    settings: Settings
    _secret: bytes | None = attrs.field(repr=False)
    _jwks: Mapping[str, Any] | None = attrs.field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenMinter:
        """Read the key; raises ConfigError (secret) or ValueError (JWKS) if unreadable."""
        if settings.jwks:
            return cls(settings, None, MappingProxyType(load_jwks(settings.jwks)))
        return cls(settings, read_secret(settings), None)

    def mint(self, subject: str, *, now: float, ttl_s: float = DEV_TOKEN_TTL_S) -> str:
        """A token for ``subject`` from ``now`` (wall clock) for ``ttl_s`` seconds.

        Raises ValueError when the key cannot sign (a JWKS without a private key).
        """
        return mint_token(
            secret=self._secret,
            jwks=self._jwks,
            algorithm=self.settings.effective_algorithms()[0],
            subject=subject,
            ttl_s=ttl_s,
            now=now,
            audience=self.settings.audience,
            issuer=self.settings.issuer,
        )
