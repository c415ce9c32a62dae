"""Bearer tokens: find them in a handshake, verify them, mint them for tests and tools.

Signatures and the JWS compact format are handled by joserfc; this module decides
which algorithms and keys are acceptable and checks the claims itself, so that every
rejection carries a precise, token-free reason.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import parse_qs

import attrs
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OctKey, RSAKey, import_key

from ..core._messages import MAX_TOKEN_CHARS

__all__ = [
    "MAX_TOKEN_CHARS",
    "AuthConfig",
    "AuthError",
    "TokenSource",
    "TokenVerifier",
    "VerifiedClaims",
    "extract_token",
    "load_jwks",
    "mint_token",
]

MAX_SUBJECT_CHARS: Final = 256
MIN_SECRET_BYTES: Final = 32

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Final = MappingProxyType({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"})
ASYMMETRIC_ALGORITHMS: Final = RSA_ALGORITHMS | frozenset(EC_CURVES)
SUPPORTED_ALGORITHMS: Final = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

# 9999-12-31T23:59:59Z: later timestamps are nonsense and would make a token immortal.
_MAX_TIMESTAMP: Final = 253_402_300_799
# RFC 7797 unencoded payloads are not for JWTs (RFC 7797 section 7); refuse rather than reason.
_UNSUPPORTED_HEADERS: Final = frozenset({"b64", "crit"})
_BEARER_PREFIX: Final = "bearer."

_STATUS: Final = MappingProxyType({"invalid_token": 401, "invalid_request": 400})


class AuthError(Exception):
    """A token problem that is the client's fault."""

    def __init__(self, error: str, detail: str) -> None:
        if error not in _STATUS:
            raise ValueError(f"unknown auth error code: {error!r}")
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail

    @property
    def status(self) -> int:
        """HTTP status for the handshake rejection (RFC 6750 section 3.1)."""
        return _STATUS[self.error]


def _invalid(detail: str) -> AuthError:
    return AuthError("invalid_token", detail)


def _check_algorithms(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError("algorithms must be a non-empty tuple")
    unknown = [repr(alg) for alg in value if alg not in SUPPORTED_ALGORITHMS]
    if unknown:
        raise ValueError(f"unsupported algorithms: {', '.join(unknown)}")


def _check_leeway(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("leeway_s must be a finite number >= 0")


@attrs.frozen
class AuthConfig:
    """What a token must satisfy besides a good signature."""

    algorithms: tuple[str, ...] = attrs.field(validator=_check_algorithms)
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = attrs.field(default=5.0, validator=_check_leeway)


@attrs.frozen
class VerifiedClaims:
    """The claims of a token that passed every check."""

    subject: str
    expires_at: float
    issued_at: float | None
    not_before: float | None


@attrs.frozen
class TokenSource:
    """A token and where the client put it."""

    token: str
    carrier: str  # "authorization" | "subprotocol" | "query"


def _import_strictly(data: Mapping[str, Any] | bytes, *, what: str) -> Key:
    # joserfc signals weak keys (short RSA, PEM-looking secrets) with SecurityWarning;
    # a weak key is a configuration error, so fail loudly instead of warning once.
    # catch_warnings is process-wide, which is fine for this startup-time, sync path.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        try:
            if isinstance(data, bytes):
                return OctKey.import_key(data)
            return import_key(dict(data))
        except (JoseError, SecurityWarning, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{what} is not usable: {exc}") from None


def _key_fits(key: Key, alg: str, operation: Literal["sign", "verify"]) -> bool:
    """Whether ``key`` may ``operation`` with ``alg``, honouring its use/alg/key_ops."""
    if key.get("use") not in (None, "sig"):
        return False
    if key.alg is not None and key.alg != alg:
        return False
    key_ops = key.get("key_ops")
    if key_ops is not None and operation not in key_ops:
        return False
    if operation == "sign" and not key.is_private:
        return False
    if alg in HMAC_ALGORITHMS:
        return isinstance(key, OctKey)
    if alg in RSA_ALGORITHMS:
        return isinstance(key, RSAKey)
    return isinstance(key, ECKey) and key.curve_name == EC_CURVES.get(alg)


def _jwks_keys(jwks: Mapping[str, Any]) -> tuple[Key, ...]:
    """The RSA and EC keys of a JWKS; keys of other types are ignored (RFC 7517 section 5)."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError('a JWKS must be an object with a "keys" array')
    keys: list[Key] = []
    for index, entry in enumerate(jwks["keys"]):
        if not isinstance(entry, Mapping):
            raise ValueError(f"JWKS key #{index} is not an object")
        # Symmetric keys never come from a JWKS here: that is the HS/RS confusion door.
        if entry.get("kty") in ("RSA", "EC"):
            keys.append(_import_strictly(entry, what=f"JWKS key #{index}"))
    return tuple(keys)


def _secret_key(secret: bytes) -> OctKey:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the HS secret must be at least {MIN_SECRET_BYTES} bytes")
    key = _import_strictly(secret, what="the HS secret")
    assert isinstance(key, OctKey)
    return key


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers picking different duplicates is a classic JWT confusion; refuse both.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"claim {name} must be a number")
    # Comparing first keeps huge ints away from float() and catches NaN and infinities.
    if not 0 <= value <= _MAX_TIMESTAMP:
        raise _invalid(f"claim {name} is out of range")
    return float(value)


@attrs.frozen(eq=False)
class TokenVerifier:
    """Checks signature and claims of compact JWS tokens; immutable."""

    _config: AuthConfig
    _keys: tuple[Key, ...] = attrs.field(repr=False)

    @_keys.validator
    def _check_keys(self, attribute: attrs.Attribute[Any], value: tuple[Key, ...]) -> None:
        if not any(_key_fits(k, a, "verify") for k in value for a in self._config.algorithms):
            raise ValueError("no key is usable for the configured algorithms")

    @property
    def config(self) -> AuthConfig:
        """The claim requirements this verifier enforces."""
        return self._config

    @classmethod
    def from_secret(cls, secret: bytes, config: AuthConfig) -> TokenVerifier:
        """A verifier for HS tokens; raises ValueError for a short secret or non-HS algorithms."""
        others = [alg for alg in config.algorithms if alg not in HMAC_ALGORITHMS]
        if others:
            raise ValueError(f"a secret verifies only HS algorithms, not {', '.join(others)}")
        return cls(config, (_secret_key(secret),))

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any], config: AuthConfig) -> TokenVerifier:
        """A verifier for RS/PS/ES tokens; raises ValueError for HS algorithms or no usable key."""
        others = [alg for alg in config.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if others:
            raise ValueError(f"a JWKS verifies only asymmetric algorithms, not {', '.join(others)}")
        keys = tuple(
            # The verifier never needs private halves; do not keep them around.
            _import_strictly(key.as_dict(private=False), what="a JWKS key")
            for key in _jwks_keys(jwks)
            if any(_key_fits(key, alg, "verify") for alg in config.algorithms)
        )
        if not keys:
            raise ValueError(
                f"the JWKS has no usable public key for {', '.join(config.algorithms)}"
            )
        return cls(config, keys)

    def verify(self, token: str, *, now: float) -> VerifiedClaims:
        """The claims of ``token`` at wall-clock ``now``; raises AuthError for any defect."""
        if not math.isfinite(now):
            raise ValueError("now must be finite")
        if not isinstance(token, str):
            raise _invalid("malformed token")
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid("token too large")
        try:
            # Compact JWS is ASCII; the strict encode turns anything else into ValueError.
            signed = jws.extract_compact(token.encode("ascii"))
        except (JoseError, ValueError, TypeError):
            raise _invalid("malformed token") from None
        header = signed.headers()
        alg = self._check_header(header)
        key = self._select_key(header, alg)
        try:
            if not jws.validate_compact(signed, key, algorithms=(alg,)):
                raise BadSignatureError()
        except BadSignatureError:
            raise _invalid("bad signature") from None
        except (JoseError, ValueError, TypeError):
            raise _invalid("malformed token") from None
        return self._check_claims(signed.payload, now=now)

    def _check_header(self, header: object) -> str:
        if not isinstance(header, dict):
            raise _invalid("malformed token")
        alg = header.get("alg")
        # "none" is never in the allow-list; this also blocks HS/RS confusion.
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise _invalid("algorithm not allowed")
        if _UNSUPPORTED_HEADERS & header.keys():
            raise _invalid("unsupported header")
        return alg

    def _select_key(self, header: Mapping[str, Any], alg: str) -> Key:
        kid = header.get("kid")
        candidates: tuple[Key, ...]
        if kid is None:
            if len(self._keys) != 1:
                raise _invalid("missing key id")
            candidates = self._keys
        elif not isinstance(kid, str):
            raise _invalid("malformed token")
        elif len(self._keys) == 1 and self._keys[0].kid is None:
            # A lone key without a kid (always so for a secret) cannot contradict the header.
            candidates = self._keys
        else:
            candidates = tuple(k for k in self._keys if k.kid == kid)
            if not candidates:
                raise _invalid("unknown key id")
        for key in candidates:
            if _key_fits(key, alg, "verify"):
                return key
        raise _invalid("key not usable for algorithm")

    def _check_claims(self, payload: bytes | None, *, now: float) -> VerifiedClaims:
        try:
            claims = json.loads(
                payload or b"",
                parse_constant=_reject_constant,
                object_pairs_hook=_object_without_duplicates,
            )
        except (ValueError, TypeError, RecursionError):
            raise _invalid("malformed token") from None
        if not isinstance(claims, dict):
            raise _invalid("malformed token")

        subject = claims.get("sub")
        if subject is None:
            raise _invalid("missing claim: sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("claim sub must be a non-empty string")
        if len(subject) > MAX_SUBJECT_CHARS:
            raise _invalid(f"claim sub is longer than {MAX_SUBJECT_CHARS} characters")

        expires_at = _timestamp(claims, "exp")
        if expires_at is None:
            raise _invalid("missing claim: exp")
        not_before = _timestamp(claims, "nbf")
        issued_at = _timestamp(claims, "iat")
        leeway = self._config.leeway_s
        if now > expires_at + leeway:
            raise _invalid("token expired")
        if not_before is not None and not_before > now + leeway:
            raise _invalid("token not yet valid")
        if issued_at is not None and issued_at > now + leeway:
            raise _invalid("token issued in the future")

        self._check_audience(claims)
        if self._config.issuer is not None:
            if "iss" not in claims:
                raise _invalid("missing claim: iss")
            if claims["iss"] != self._config.issuer:
                raise _invalid("wrong issuer")
        return VerifiedClaims(
            subject=subject, expires_at=expires_at, issued_at=issued_at, not_before=not_before
        )

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        expected = self._config.audience
        if expected is None:
            return
        if "aud" not in claims:
            raise _invalid("missing claim: aud")
        audience = claims["aud"]
        # RFC 7519 section 4.1.3: a single string or an array of strings.
        if audience == expected or (isinstance(audience, list) and expected in audience):
            return
        raise _invalid("wrong audience")


def load_jwks(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JWKS file at ``path``; raises ValueError if unreadable or not a JWKS."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read JWKS file {os.fspath(path)}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"JWKS file {os.fspath(path)} is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ValueError(f"JWKS file {os.fspath(path)} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f'JWKS file {os.fspath(path)} must hold an object with a "keys" array')
    if not all(isinstance(entry, dict) for entry in data["keys"]):
        raise ValueError(f"JWKS file {os.fspath(path)} has a key that is not an object")
    return data


def mint_token(
    *,
    secret: bytes | None = None,
    jwks: Mapping[str, Any] | None = None,
    algorithm: str,
    subject: str,
    ttl_s: float,
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed JWT for ``subject``, valid from ``now`` for ``ttl_s`` seconds.

    Exactly one of ``secret`` (HS algorithms) or ``jwks`` (its first private key usable
    for ``algorithm``) signs. ``extra_claims`` are added last and may override the others,
    which lets tests craft deliberately broken tokens.
    """
    if (secret is None) == (jwks is None):
        raise ValueError("pass exactly one of secret or jwks")
    if not (math.isfinite(ttl_s) and ttl_s > 0 and math.isfinite(now)):
        raise ValueError("ttl_s must be a positive number and now finite")
    header: dict[str, Any] = {"alg": algorithm}
    key: Key
    if secret is not None:
        if algorithm not in HMAC_ALGORITHMS:
            raise ValueError(f"a secret signs only HS algorithms, not {algorithm}")
        key = _secret_key(secret)
    else:
        assert jwks is not None
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"a JWKS signs only asymmetric algorithms, not {algorithm}")
        usable = [k for k in _jwks_keys(jwks) if _key_fits(k, algorithm, "sign")]
        if not usable:
            raise ValueError(f"the JWKS has no private key usable for {algorithm}")
        key = usable[0]
        if key.kid is not None:
            header["kid"] = key.kid
    claims: dict[str, Any] = {"sub": subject, "iat": int(now), "exp": int(now + ttl_s)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    claims.update(extra_claims or {})
    return jwt.encode(header, claims, key, algorithms=(algorithm,))


def extract_token(
    *,
    headers: Sequence[tuple[str, str]],
    subprotocols: Sequence[str],
    query_string: str,
    allow_query: bool,
) -> TokenSource:
    """The one bearer token of a handshake (RFC 6750 section 2).

    Looks at ``Authorization: Bearer``, a ``bearer.<jwt>`` subprotocol and, when
    ``allow_query``, ``?access_token=``. Raises AuthError when there is none, more
    than one, or a carrier is malformed.
    """
    found: list[TokenSource] = []
    for name, value in headers:
        if name.lower() == "authorization":
            found.append(TokenSource(_bearer_credentials(value), "authorization"))
    for protocol in subprotocols:
        if protocol.startswith(_BEARER_PREFIX):
            token = protocol.removeprefix(_BEARER_PREFIX)
            if not token:
                raise AuthError("invalid_request", "empty bearer subprotocol")
            found.append(TokenSource(token, "subprotocol"))
    query_tokens = parse_qs(query_string, keep_blank_values=True).get("access_token", [])
    if query_tokens and not allow_query:
        raise AuthError("invalid_request", "query-string tokens are disabled")
    for token in query_tokens:
        if not token:
            raise AuthError("invalid_request", "empty access_token parameter")
        found.append(TokenSource(token, "query"))

    if not found:
        raise AuthError("invalid_token", "missing token")
    if len(found) > 1:
        raise AuthError("invalid_request", "token sent in more than one carrier")
    return found[0]


def _bearer_credentials(value: str) -> str:
    scheme, _, credentials = value.strip().partition(" ")
    if not scheme:
        raise AuthError("invalid_request", "empty authorization header")
    # The scheme is case-insensitive (RFC 9110 section 11.1).
    if scheme.lower() != "bearer":
        raise AuthError("invalid_request", "authorization scheme must be Bearer")
    credentials = credentials.strip()
    if not credentials:
        raise AuthError("invalid_request", "empty bearer token")
    if any(char.isspace() for char in credentials):
        raise AuthError("invalid_request", "malformed bearer token")
    return credentials
