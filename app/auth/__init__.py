"""Who a connection is: bearer tokens (JOSE, through joserfc) and the user context.

- ``_tokens``: ``TokenVerifier`` (HS/RS/PS/ES, JWKS), ``mint_token`` for dev and tests.
- ``_context``: ``UserContext``, the frozen, verified identity one connection owns.
"""

from ._context import UserContext as UserContext
from ._tokens import AuthConfig as AuthConfig
from ._tokens import AuthError as AuthError
from ._tokens import TokenVerifier as TokenVerifier
from ._tokens import VerifiedClaims as VerifiedClaims
from ._tokens import mint_token as mint_token

__all__ = [
    "AuthConfig",
    "AuthError",
    "TokenVerifier",
    "UserContext",
    "VerifiedClaims",
    "mint_token",
]
