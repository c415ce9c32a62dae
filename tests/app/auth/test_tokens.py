"""Token verification, minting and carrier extraction (app.auth._tokens)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from app.auth._tokens import (
    MAX_TOKEN_CHARS,
    AuthConfig,
    AuthError,
    TokenSource,
    TokenVerifier,
    VerifiedClaims,
    extract_token,
    load_jwks,
    mint_token,
)

NOW = 1_700_000_000.0
SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
HS256 = AuthConfig(algorithms=("HS256",))
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- helpers ---------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64url(json.dumps(value).encode())


def hs_raw(header: Mapping[str, Any], payload: bytes, secret: bytes = SECRET) -> str:
    """A HS256 token built by hand: lets the header and payload be anything at all."""
    signing_input = f"{b64json(header)}.{b64url(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def hs_token(claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
    """A HS256 token over exactly ``claims`` (no defaults added), signed by joserfc."""
    return jwt.encode(dict(header or {"alg": "HS256"}), dict(claims), OctKey.import_key(SECRET))


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 60}
    claims.update(overrides)
    return claims


def hs_verifier(**config: Any) -> TokenVerifier:
    return TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",), **config))


def reject(verifier: TokenVerifier, token: str, *, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, now=now)
    assert info.value.error == "invalid_token"
    assert info.value.status == 401
    if len(token) > 8:
        assert token not in info.value.detail
        assert token not in str(info.value)
    return info.value


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def private_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=True) for key in keys]}


# -- keys (slow to generate: once per module) ------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture(scope="module")
def ec384_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-384"})


@pytest.fixture(scope="module")
def signing_jwks(rsa_key: RSAKey, ec_key: ECKey) -> dict[str, Any]:
    return private_jwks(rsa_key, ec_key)


@pytest.fixture(scope="module")
def asym_verifier(rsa_key: RSAKey, ec_key: ECKey) -> TokenVerifier:
    config = AuthConfig(algorithms=("RS256", "ES256"))
    return TokenVerifier.from_jwks(public_jwks(rsa_key, ec_key), config)


# -- AuthError and AuthConfig ----------------------------------------------


def test_auth_error_fields_and_status() -> None:
    token_error = AuthError("invalid_token", "token expired")
    request_error = AuthError("invalid_request", "token sent in more than one carrier")
    assert (token_error.error, token_error.detail, token_error.status) == (
        "invalid_token",
        "token expired",
        401,
    )
    assert request_error.status == 400
    assert str(token_error) == "invalid_token: token expired"


def test_auth_error_rejects_unknown_code() -> None:
    with pytest.raises(ValueError, match="unknown auth error code"):
        AuthError("server_error", "boom")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithms": ()}, "non-empty tuple"),
        ({"algorithms": ["HS256"]}, "non-empty tuple"),
        ({"algorithms": ("HS256", "none")}, "unsupported algorithms: 'none'"),
        ({"algorithms": ("EdDSA",)}, "unsupported algorithms"),
        ({"algorithms": ("HS256",), "leeway_s": -1.0}, "leeway_s"),
        ({"algorithms": ("HS256",), "leeway_s": math.nan}, "leeway_s"),
        ({"algorithms": ("HS256",), "leeway_s": math.inf}, "leeway_s"),
    ],
)
def test_auth_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthConfig(**kwargs)


def test_auth_config_defaults_and_frozen() -> None:
    config = AuthConfig(algorithms=("HS256",))
    assert (config.audience, config.issuer, config.leeway_s) == (None, None, 5.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.leeway_s = 1.0  # type: ignore[misc]


# -- round trips -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hs_round_trip(algorithm: str) -> None:
    verifier = TokenVerifier.from_secret(
        SECRET, AuthConfig(algorithms=(algorithm,), audience="chat", issuer="idp")
    )
    token = mint_token(
        secret=SECRET,
        algorithm=algorithm,
        subject="alice",
        ttl_s=60,
        now=NOW,
        audience="chat",
        issuer="idp",
    )
    assert verifier.verify(token, now=NOW) == VerifiedClaims(
        subject="alice", expires_at=NOW + 60, issued_at=NOW, not_before=None
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_round_trip(
    algorithm: str, signing_jwks: dict[str, Any], asym_verifier: TokenVerifier
) -> None:
    token = mint_token(jwks=signing_jwks, algorithm=algorithm, subject="bob", ttl_s=30, now=NOW)
    claims = asym_verifier.verify(token, now=NOW + 10)
    assert (claims.subject, claims.expires_at, claims.issued_at) == ("bob", NOW + 30, NOW)


def test_other_asymmetric_algorithms(rsa_key: RSAKey, ec384_key: ECKey) -> None:
    config = AuthConfig(algorithms=("PS256", "ES384"))
    verifier = TokenVerifier.from_jwks(public_jwks(rsa_key, ec384_key), config)
    jwks = private_jwks(rsa_key, ec384_key)
    for algorithm in ("PS256", "ES384"):
        token = mint_token(jwks=jwks, algorithm=algorithm, subject="c", ttl_s=30, now=NOW)
        assert verifier.verify(token, now=NOW).subject == "c"


def test_verifier_from_private_jwks_keeps_only_public_halves(
    signing_jwks: dict[str, Any],
) -> None:
    verifier = TokenVerifier.from_jwks(signing_jwks, AuthConfig(algorithms=("RS256",)))
    assert verifier.config.algorithms == ("RS256",)
    keys = verifier._keys  # the private field is the point of this test
    assert len(keys) == 1
    assert not keys[0].is_private
    token = mint_token(jwks=signing_jwks, algorithm="RS256", subject="d", ttl_s=30, now=NOW)
    assert verifier.verify(token, now=NOW).subject == "d"


def test_verifier_is_immutable_and_repr_hides_keys() -> None:
    verifier = hs_verifier()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        verifier._keys = ()  # type: ignore[misc]
    assert "OctKey" not in repr(verifier)
    assert "keys" not in repr(verifier)


def test_verified_claims_carry_nbf_and_iat() -> None:
    token = hs_token(good_claims(nbf=NOW - 5, iat=NOW - 10))
    claims = hs_verifier().verify(token, now=NOW)
    assert (claims.not_before, claims.issued_at) == (NOW - 5, NOW - 10)


def test_iat_is_optional() -> None:
    claims = good_claims()
    del claims["iat"]
    assert hs_verifier().verify(hs_token(claims), now=NOW).issued_at is None


# -- algorithms ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(alg: str, asym_verifier: TokenVerifier) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(good_claims())}."
    assert reject(hs_verifier(), token).detail == "algorithm not allowed"
    assert reject(asym_verifier, token).detail == "algorithm not allowed"


def test_alg_missing_or_not_a_string() -> None:
    for header in ({"typ": "JWT"}, {"alg": 256}, {"alg": None}):
        token = f"{b64json(header)}.{b64json(good_claims())}.c2ln"
        assert reject(hs_verifier(), token).detail in {"algorithm not allowed", "malformed token"}
    token = hs_raw({"alg": ["HS256"]}, json.dumps(good_claims()).encode())
    assert reject(hs_verifier(), token).detail == "algorithm not allowed"


def test_algorithm_outside_allow_list() -> None:
    token = mint_token(secret=SECRET, algorithm="HS512", subject="a", ttl_s=60, now=NOW)
    assert reject(hs_verifier(), token).detail == "algorithm not allowed"


def test_hs_token_signed_with_rsa_public_key_fails_rsa_verifier(
    rsa_key: RSAKey, asym_verifier: TokenVerifier
) -> None:
    # The classic confusion: the attacker uses the public PEM as an HMAC secret.
    public_pem = rsa_key.as_pem(private=False)
    token = hs_raw({"alg": "HS256", "kid": "rsa-1"}, json.dumps(good_claims()).encode(), public_pem)
    assert reject(asym_verifier, token).detail == "algorithm not allowed"


def test_rs_token_fails_secret_verifier(signing_jwks: dict[str, Any]) -> None:
    token = mint_token(jwks=signing_jwks, algorithm="RS256", subject="a", ttl_s=60, now=NOW)
    assert reject(hs_verifier(), token).detail == "algorithm not allowed"


def test_hs_token_fails_rsa_verifier_even_if_config_lists_both(rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="only asymmetric"):
        TokenVerifier.from_jwks(public_jwks(rsa_key), AuthConfig(algorithms=("RS256", "HS256")))


# -- key selection ---------------------------------------------------------


def test_unknown_kid(signing_jwks: dict[str, Any], asym_verifier: TokenVerifier) -> None:
    jwks = {"keys": [dict(signing_jwks["keys"][0], kid="rsa-2")]}
    token = mint_token(jwks=jwks, algorithm="RS256", subject="a", ttl_s=60, now=NOW)
    assert reject(asym_verifier, token).detail == "unknown key id"


def test_kid_must_be_a_string(asym_verifier: TokenVerifier) -> None:
    token = f"{b64json({'alg': 'RS256', 'kid': 7})}.{b64json(good_claims())}.c2ln"
    assert reject(asym_verifier, token).detail == "malformed token"


def test_kid_of_key_for_another_algorithm(
    signing_jwks: dict[str, Any], asym_verifier: TokenVerifier
) -> None:
    # Signed with the EC key but labelled with the RSA key's kid.
    ec_only = {"keys": [dict(signing_jwks["keys"][1], kid="rsa-1")]}
    token = mint_token(jwks=ec_only, algorithm="ES256", subject="a", ttl_s=60, now=NOW)
    assert reject(asym_verifier, token).detail == "key not usable for algorithm"


def test_no_kid_with_several_keys(rsa_key: RSAKey, asym_verifier: TokenVerifier) -> None:
    token = jwt.encode({"alg": "RS256"}, good_claims(), rsa_key)
    assert reject(asym_verifier, token).detail == "missing key id"


def test_no_kid_with_a_single_key(rsa_key: RSAKey) -> None:
    verifier = TokenVerifier.from_jwks(public_jwks(rsa_key), AuthConfig(algorithms=("RS256",)))
    token = jwt.encode({"alg": "RS256"}, good_claims(), rsa_key)
    assert verifier.verify(token, now=NOW).subject == "alice"


def test_kid_selects_among_keys_of_the_same_type(rsa_key: RSAKey) -> None:
    second = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
    verifier = TokenVerifier.from_jwks(
        public_jwks(rsa_key, second), AuthConfig(algorithms=("RS256",))
    )
    for key in (rsa_key, second):
        token = mint_token(jwks=private_jwks(key), algorithm="RS256", subject="a", ttl_s=9, now=NOW)
        assert verifier.verify(token, now=NOW).subject == "a"


def test_secret_verifier_ignores_token_kid() -> None:
    token = hs_token(good_claims(), header={"alg": "HS256", "kid": "whatever"})
    assert hs_verifier().verify(token, now=NOW).subject == "alice"


def test_lone_key_with_kid_still_checks_kid(rsa_key: RSAKey) -> None:
    verifier = TokenVerifier.from_jwks(public_jwks(rsa_key), AuthConfig(algorithms=("RS256",)))
    token = jwt.encode({"alg": "RS256", "kid": "other"}, good_claims(), rsa_key)
    assert reject(verifier, token).detail == "unknown key id"


# -- signature and structure -----------------------------------------------


def test_tampered_payload() -> None:
    token = hs_token(good_claims())
    header, _, signature = token.split(".")
    forged = f"{header}.{b64json(good_claims(sub='mallory'))}.{signature}"
    assert reject(hs_verifier(), forged).detail == "bad signature"


def test_wrong_secret() -> None:
    token = mint_token(secret=OTHER_SECRET, algorithm="HS256", subject="a", ttl_s=60, now=NOW)
    assert reject(hs_verifier(), token).detail == "bad signature"


def test_rs256_signed_by_another_key(other_rsa_key: RSAKey, asym_verifier: TokenVerifier) -> None:
    token = mint_token(
        jwks=private_jwks(other_rsa_key), algorithm="RS256", subject="a", ttl_s=60, now=NOW
    )
    assert reject(asym_verifier, token).detail == "bad signature"


@pytest.mark.parametrize("signature", ["", "AAAA", "not*base64", "A"])
def test_corrupted_signature(signature: str) -> None:
    header, payload, _ = hs_token(good_claims()).split(".")
    detail = reject(hs_verifier(), f"{header}.{payload}.{signature}").detail
    assert detail in {"bad signature", "malformed token"}


def test_signature_not_base64url_is_bad_signature() -> None:
    header, payload, _ = hs_token(good_claims()).split(".")
    assert reject(hs_verifier(), f"{header}.{payload}.a+b/").detail == "bad signature"


def test_es256_signature_of_wrong_length(asym_verifier: TokenVerifier) -> None:
    header = b64json({"alg": "ES256", "kid": "ec-1"})
    token = f"{header}.{b64json(good_claims())}.{b64url(b'x' * 10)}"
    assert reject(asym_verifier, token).detail == "bad signature"


def test_unregistered_header_parameter_is_malformed() -> None:
    # joserfc refuses header parameters it does not know; that is not a signature problem.
    token = hs_token(good_claims(), header={"alg": "HS256"}).split(".")
    header = b64json({"alg": "HS256", "zzz": 1})
    mac = hmac.new(SECRET, f"{header}.{token[1]}".encode(), hashlib.sha256).digest()
    assert reject(hs_verifier(), f"{header}.{token[1]}.{b64url(mac)}").detail == "malformed token"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "b64": False, "crit": ["b64"]},
        {"alg": "HS256", "crit": ["exp"]},
    ],
)
def test_unencoded_payload_and_crit_rejected(header: dict[str, Any]) -> None:
    token = hs_raw(header, json.dumps(good_claims()).encode())
    assert reject(hs_verifier(), token).detail == "unsupported header"


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2]",
        b'"alice"',
        b"null",
        b"not json",
        b"\xff\xfe",
        b'{"sub": "a", "exp": NaN}',
        b'{"sub": "a", "exp": Infinity}',
        b'{"sub": "a", "sub": "b", "exp": 1700000060}',
        b"[" * 3000 + b"]" * 3000,
        b"",
    ],
)
def test_payload_that_is_not_a_claims_object(payload: bytes) -> None:
    assert reject(hs_verifier(), hs_raw({"alg": "HS256"}, payload)).detail == "malformed token"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "ey.ey.ey",
        "ünïcode.tökén.sig",
        "\x00\x00",
        f"{b64json(['alg'])}.{b64json({})}.c2ln",
        f"{b64json('alg')}.{b64json({})}.c2ln",
        f"{b64json(['alg', 'b64'])}.{b64json({})}.c2ln",
        f"{b64json('alg b64')}.{b64json({})}.c2ln",
        f"{b64json({'alg': 'HS256', 'b64': False})}.{b64json({})}.c2ln",
        f"{b64json(5)}.{b64json({})}.c2ln",
        f"{b64url(b'{not json')}.{b64json({})}.c2ln",
        f"{b64json({'alg': 'HS256'})}.!!!.c2ln",
        "Bearer " + "x" * 20,
    ],
)
def test_garbage_strings(token: str) -> None:
    assert reject(hs_verifier(), token).detail in {"malformed token", "algorithm not allowed"}


def test_non_string_token() -> None:
    assert reject(hs_verifier(), b"abc").detail == "malformed token"  # type: ignore[arg-type]


def test_token_too_large_is_rejected_before_parsing() -> None:
    assert reject(hs_verifier(), "x" * (MAX_TOKEN_CHARS + 1)).detail == "token too large"
    valid = hs_token(good_claims(pad="p" * MAX_TOKEN_CHARS))
    assert reject(hs_verifier(), valid).detail == "token too large"
    # At the limit the token is parsed (and here found malformed), not refused for size.
    assert reject(hs_verifier(), "x" * MAX_TOKEN_CHARS).detail == "malformed token"


def test_token_just_under_the_limit_verifies() -> None:
    base = len(hs_token(good_claims(pad="")))
    # Every 3 payload bytes add 4 characters; aim just below the limit.
    pad = "p" * ((MAX_TOKEN_CHARS - base) * 3 // 4 - 2)
    token = hs_token(good_claims(pad=pad))
    assert MAX_TOKEN_CHARS - 4 <= len(token) <= MAX_TOKEN_CHARS
    assert hs_verifier().verify(token, now=NOW).subject == "alice"


def test_non_finite_now_is_a_programming_error() -> None:
    token = hs_token(good_claims())
    for now in (math.nan, math.inf):
        with pytest.raises(ValueError, match="now must be finite"):
            hs_verifier().verify(token, now=now)


# -- time claims -----------------------------------------------------------


def test_expired() -> None:
    token = hs_token(good_claims(exp=int(NOW)))
    assert reject(hs_verifier(), token, now=NOW + 5.001).detail == "token expired"


def test_expired_within_leeway_is_accepted() -> None:
    token = hs_token(good_claims(exp=int(NOW)))
    assert hs_verifier().verify(token, now=NOW + 5.0).expires_at == NOW


def test_zero_leeway() -> None:
    token = hs_token(good_claims(exp=int(NOW)))
    assert reject(hs_verifier(leeway_s=0.0), token, now=NOW + 0.001).detail == "token expired"


def test_not_yet_valid() -> None:
    token = hs_token(good_claims(nbf=NOW + 5.001))
    assert reject(hs_verifier(), token).detail == "token not yet valid"
    assert hs_verifier().verify(hs_token(good_claims(nbf=NOW + 5)), now=NOW).not_before == NOW + 5


def test_issued_in_the_future() -> None:
    token = hs_token(good_claims(iat=NOW + 6))
    assert reject(hs_verifier(), token).detail == "token issued in the future"
    assert hs_verifier().verify(hs_token(good_claims(iat=NOW + 5)), now=NOW).issued_at == NOW + 5


def test_missing_exp() -> None:
    claims = good_claims()
    del claims["exp"]
    assert reject(hs_verifier(), hs_token(claims)).detail == "missing claim: exp"
    assert reject(hs_verifier(), hs_token(good_claims(exp=None))).detail == "missing claim: exp"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1700000060", True, False, [1], {"t": 1}])
def test_time_claim_must_be_a_number(claim: str, value: object) -> None:
    token = hs_token(good_claims(**{claim: value}))
    assert reject(hs_verifier(), token).detail == f"claim {claim} must be a number"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [1e300, 10**400, -1, 253_402_300_800])
def test_absurd_time_claims(claim: str, value: float) -> None:
    token = hs_token(good_claims(**{claim: value}))
    assert reject(hs_verifier(), token).detail == f"claim {claim} is out of range"


def test_exp_overflowing_to_infinity() -> None:
    payload = b'{"sub": "a", "exp": 1e400}'
    detail = reject(hs_verifier(), hs_raw({"alg": "HS256"}, payload)).detail
    assert detail == "claim exp is out of range"


def test_float_exp_is_accepted() -> None:
    assert hs_verifier().verify(hs_token(good_claims(exp=NOW + 0.5)), now=NOW).expires_at == (
        NOW + 0.5
    )


# -- subject -----------------------------------------------------------------


def test_missing_sub() -> None:
    claims = good_claims()
    del claims["sub"]
    assert reject(hs_verifier(), hs_token(claims)).detail == "missing claim: sub"


@pytest.mark.parametrize("sub", [123, 1.5, True, ["alice"], {"id": "alice"}, ""])
def test_sub_must_be_a_non_empty_string(sub: object) -> None:
    detail = reject(hs_verifier(), hs_token(good_claims(sub=sub))).detail
    assert detail == "claim sub must be a non-empty string"


def test_sub_length_limit() -> None:
    assert hs_verifier().verify(hs_token(good_claims(sub="a" * 256)), now=NOW).subject == "a" * 256
    detail = reject(hs_verifier(), hs_token(good_claims(sub="a" * 257))).detail
    assert detail == "claim sub is longer than 256 characters"


# -- audience and issuer -----------------------------------------------------


def test_audience_checked_when_configured() -> None:
    verifier = hs_verifier(audience="chat")
    assert verifier.verify(hs_token(good_claims(aud="chat")), now=NOW).subject == "alice"
    assert verifier.verify(hs_token(good_claims(aud=["x", "chat"])), now=NOW).subject == "alice"
    assert reject(verifier, hs_token(good_claims(aud="mail"))).detail == "wrong audience"
    assert reject(verifier, hs_token(good_claims(aud=["mail"]))).detail == "wrong audience"
    assert reject(verifier, hs_token(good_claims(aud=7))).detail == "wrong audience"
    assert reject(verifier, hs_token(good_claims(aud={"chat": 1}))).detail == "wrong audience"
    assert reject(verifier, hs_token(good_claims())).detail == "missing claim: aud"


def test_audience_ignored_when_not_configured() -> None:
    assert hs_verifier().verify(hs_token(good_claims(aud="mail")), now=NOW).subject == "alice"


def test_issuer_checked_when_configured() -> None:
    verifier = hs_verifier(issuer="https://idp")
    assert verifier.verify(hs_token(good_claims(iss="https://idp")), now=NOW).subject == "alice"
    assert reject(verifier, hs_token(good_claims(iss="https://evil"))).detail == "wrong issuer"
    assert reject(verifier, hs_token(good_claims(iss=["https://idp"]))).detail == "wrong issuer"
    assert reject(verifier, hs_token(good_claims())).detail == "missing claim: iss"
    assert hs_verifier().verify(hs_token(good_claims(iss="any")), now=NOW).subject == "alice"


# -- robustness: only AuthError, ever ------------------------------------------


def _verify_or_auth_error(verifier: TokenVerifier, token: str) -> VerifiedClaims | None:
    try:
        return verifier.verify(token, now=NOW)
    except AuthError as exc:
        error = exc.error
    assert error == "invalid_token"
    return None


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    assert _verify_or_auth_error(hs_verifier(), text) is None


@FUZZ
@given(st.lists(st.text(alphabet="ABCDEFGHIJabcdefgh0123456789-_=+/ .", max_size=40), max_size=5))
def test_fuzz_dotted_segments(parts: list[str]) -> None:
    assert _verify_or_auth_error(hs_verifier(), ".".join(parts)) is None


_VALID = hs_token(good_claims(aud="chat", nbf=NOW - 10))


@FUZZ
@given(
    st.integers(min_value=0, max_value=len(_VALID) - 1),
    st.sampled_from(["replace", "insert", "delete", "truncate"]),
    st.characters(codec="utf-8"),
)
def test_fuzz_mutated_valid_token(position: int, operation: str, char: str) -> None:
    if operation == "replace":
        mutated = _VALID[:position] + char + _VALID[position + 1 :]
    elif operation == "insert":
        mutated = _VALID[:position] + char + _VALID[position:]
    elif operation == "delete":
        mutated = _VALID[:position] + _VALID[position + 1 :]
    else:
        mutated = _VALID[:position]
    result = _verify_or_auth_error(hs_verifier(audience="chat"), mutated)
    # Base64url has slack bits at the end of a segment, so some edits decode to the same bytes.
    if result is not None:
        assert result.subject == "alice"


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "x"]),
        _JSON | st.integers(min_value=int(NOW) - 100, max_value=int(NOW) + 100),
    )
)
def test_fuzz_signed_claims(claims: dict[str, Any]) -> None:
    result = _verify_or_auth_error(hs_verifier(audience="chat", issuer="idp"), hs_token(claims))
    if result is not None:
        assert result.subject == claims["sub"]
        assert claims["aud"] == "chat" or "chat" in claims["aud"]


_HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "b64", "crit", "jwk"]) | st.text(max_size=8)


@FUZZ
@given(st.dictionaries(_HEADER_NAMES, _JSON, max_size=4) | _JSON | st.lists(_HEADER_NAMES))
def test_fuzz_header(header: object) -> None:
    token = f"{b64json(header)}.{b64json(good_claims())}.{b64url(b'sig')}"
    assert _verify_or_auth_error(hs_verifier(), token) is None


# -- from_secret / from_jwks -------------------------------------------------


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 31])
def test_from_secret_rejects_short_secret(secret: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier.from_secret(secret, HS256)


def test_from_secret_rejects_non_bytes_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier.from_secret("s" * 32, HS256)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithms", [("RS256",), ("HS256", "ES256"), ("PS256",)])
def test_from_secret_rejects_asymmetric_algorithms(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="only HS algorithms"):
        TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=algorithms))


def test_from_secret_rejects_public_key_pem(rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="not usable"):
        TokenVerifier.from_secret(rsa_key.as_pem(private=False), HS256)


def test_from_secret_rejects_key_looking_secret() -> None:
    # joserfc only warns about this; the verifier must refuse even where warnings are ignored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not usable"):
            TokenVerifier.from_secret(b"-----BEGIN garbage that is long enough", HS256)


@pytest.mark.parametrize("algorithms", [("HS256",), ("RS256", "HS512")])
def test_from_jwks_rejects_hs_algorithms(algorithms: tuple[str, ...], rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="only asymmetric"):
        TokenVerifier.from_jwks(public_jwks(rsa_key), AuthConfig(algorithms=algorithms))


RS256 = AuthConfig(algorithms=("RS256",))


@pytest.mark.parametrize(
    "jwks",
    [
        {"keys": []},
        {"keys": [{"kty": "oct", "k": b64url(SECRET)}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(b"x" * 32)}]},
        {"keys": [{"kty": "post-quantum"}]},
        {"keys": [{"no": "kty"}]},
    ],
)
def test_from_jwks_without_usable_keys(jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no usable public key"):
        TokenVerifier.from_jwks(jwks, RS256)


@pytest.mark.parametrize(
    "params",
    [{"use": "enc"}, {"alg": "RS512"}, {"key_ops": ["encrypt"]}],
)
def test_from_jwks_skips_keys_restricted_elsewhere(rsa_key: RSAKey, params: dict[str, Any]) -> None:
    jwks = {"keys": [{**rsa_key.as_dict(private=False), **params}]}
    with pytest.raises(ValueError, match="no usable public key"):
        TokenVerifier.from_jwks(jwks, RS256)


def test_from_jwks_honours_key_restrictions_that_allow(rsa_key: RSAKey) -> None:
    params = {"use": "sig", "alg": "RS256", "key_ops": ["verify"]}
    jwks = {"keys": [{**rsa_key.as_dict(private=False), **params}]}
    verifier = TokenVerifier.from_jwks(jwks, RS256)
    token = jwt.encode({"alg": "RS256", "kid": "rsa-1"}, good_claims(), rsa_key)
    assert verifier.verify(token, now=NOW).subject == "alice"


def test_from_jwks_curve_must_match(ec384_key: ECKey) -> None:
    with pytest.raises(ValueError, match="no usable public key"):
        TokenVerifier.from_jwks(public_jwks(ec384_key), AuthConfig(algorithms=("ES256",)))


@pytest.mark.parametrize(
    "jwks",
    [{}, {"keys": {}}, {"keys": "x"}, ["keys"], {"keys": [1]}, {"keys": ["RSA"]}],
)
def test_from_jwks_rejects_malformed_sets(jwks: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        TokenVerifier.from_jwks(jwks, RS256)


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "RSA", "e": "AQAB"},
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"},
        {"kty": "RSA", "n": 5, "e": "AQAB"},
    ],
)
def test_from_jwks_rejects_broken_keys(entry: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="JWKS key #0 is not usable"):
        TokenVerifier.from_jwks({"keys": [entry]}, RS256)


def test_from_jwks_rejects_weak_rsa_key() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = weak.public_key().public_numbers()
    entry = {
        "kty": "RSA",
        "n": b64url(numbers.n.to_bytes(128, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not usable"):
            TokenVerifier.from_jwks({"keys": [entry]}, RS256)


def test_direct_construction_requires_a_fitting_key(rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="no key is usable"):
        TokenVerifier(HS256, (rsa_key,))


# -- load_jwks ----------------------------------------------------------------


def test_load_jwks_round_trip(tmp_path: Path, rsa_key: RSAKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(public_jwks(rsa_key)), encoding="utf-8")
    loaded = load_jwks(path)
    assert loaded == public_jwks(rsa_key)
    assert load_jwks(str(path)) == loaded
    verifier = TokenVerifier.from_jwks(loaded, RS256)
    token = jwt.encode({"alg": "RS256", "kid": "rsa-1"}, good_claims(), rsa_key)
    assert verifier.verify(token, now=NOW).subject == "alice"


def test_load_jwks_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read JWKS file .*missing\.json"):
        load_jwks(tmp_path / "missing.json")


def test_load_jwks_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read JWKS file"):
        load_jwks(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b'{"keys": [], "x": NaN}', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", '"keys" array'),
        (b'{"keys": {}}', '"keys" array'),
        (b'{"key": []}', '"keys" array'),
        (b'{"keys": [1]}', "not an object"),
    ],
)
def test_load_jwks_invalid(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_jwks(path)


# -- mint_token -----------------------------------------------------------------


def _decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    signed = jws.extract_compact(token.encode())
    return signed.headers(), json.loads(signed.payload or b"")


def test_mint_token_claims_and_header() -> None:
    token = mint_token(
        secret=SECRET,
        algorithm="HS256",
        subject="alice",
        ttl_s=90.9,
        now=NOW + 0.7,
        audience="chat",
        issuer="idp",
        extra_claims={"scope": "chat", "exp": 5},
    )
    header, claims = _decode_unverified(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims == {
        "sub": "alice",
        "iat": int(NOW),
        "exp": 5,  # extra_claims win, so tests can sign deliberately broken tokens
        "aud": "chat",
        "iss": "idp",
        "scope": "chat",
    }


def test_mint_token_exp_is_truncated() -> None:
    token = mint_token(secret=SECRET, algorithm="HS256", subject="a", ttl_s=90.9, now=NOW + 0.7)
    assert _decode_unverified(token)[1] == {"sub": "a", "iat": int(NOW), "exp": int(NOW) + 91}


def test_mint_token_sets_kid_only_when_key_has_one(rsa_key: RSAKey) -> None:
    with_kid = mint_token(
        jwks=private_jwks(rsa_key), algorithm="RS256", subject="a", ttl_s=9, now=NOW
    )
    assert _decode_unverified(with_kid)[0]["kid"] == "rsa-1"
    entry = rsa_key.as_dict(private=True)
    del entry["kid"]
    without = mint_token(jwks={"keys": [entry]}, algorithm="RS256", subject="a", ttl_s=9, now=NOW)
    assert "kid" not in _decode_unverified(without)[0]


def test_mint_token_picks_first_usable_private_key(rsa_key: RSAKey, ec_key: ECKey) -> None:
    second = {**rsa_key.as_dict(private=True), "kid": "rsa-second"}
    jwks = {
        "keys": [
            ec_key.as_dict(private=True),
            rsa_key.as_dict(private=False),  # public only: cannot sign
            {**rsa_key.as_dict(private=True), "use": "enc", "kid": "enc"},
            second,
            rsa_key.as_dict(private=True),
        ]
    }
    token = mint_token(jwks=jwks, algorithm="RS256", subject="a", ttl_s=9, now=NOW)
    assert _decode_unverified(token)[0]["kid"] == "rsa-second"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"secret": SECRET, "jwks": {"keys": []}}, "exactly one of"),
        ({"secret": SECRET, "algorithm": "RS256"}, "only HS algorithms"),
        ({"secret": SECRET, "algorithm": "none"}, "only HS algorithms"),
        ({"secret": b"short"}, "at least 32 bytes"),
        ({"jwks": {"keys": []}}, "only asymmetric"),
        ({"jwks": {"keys": []}, "algorithm": "RS256"}, "no private key usable"),
        ({"jwks": {"keys": []}, "algorithm": "HS999"}, "only asymmetric"),
        ({"secret": SECRET, "ttl_s": 0}, "ttl_s"),
        ({"secret": SECRET, "ttl_s": -5}, "ttl_s"),
        ({"secret": SECRET, "ttl_s": math.nan}, "ttl_s"),
        ({"secret": SECRET, "now": math.inf}, "now"),
    ],
)
def test_mint_token_errors(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"algorithm": "HS256", "subject": "a", "ttl_s": 60, "now": NOW}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mint_token(**arguments)


def test_mint_token_with_public_only_jwks(rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="no private key usable for RS256"):
        mint_token(jwks=public_jwks(rsa_key), algorithm="RS256", subject="a", ttl_s=9, now=NOW)


# -- extract_token ----------------------------------------------------------------


def extract(
    headers: list[tuple[str, str]] | None = None,
    subprotocols: list[str] | None = None,
    query_string: str = "",
    *,
    allow_query: bool = True,
) -> TokenSource:
    return extract_token(
        headers=headers or [],
        subprotocols=subprotocols or [],
        query_string=query_string,
        allow_query=allow_query,
    )


def extract_error(*args: Any, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        extract(*args, **kwargs)
    assert "XQZ" not in info.value.detail
    return info.value


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_authorization_header(scheme: str) -> None:
    source = extract([("host", "x"), ("authorization", f"{scheme} jwt.XQZ.sig")])
    assert source == TokenSource(token="jwt.XQZ.sig", carrier="authorization")


def test_authorization_header_name_case_and_spacing() -> None:
    source = extract([("Authorization", "  Bearer   jwt.XQZ.sig  ")])
    assert source == TokenSource("jwt.XQZ.sig", "authorization")


def test_subprotocol() -> None:
    source = extract(subprotocols=["chat.v1", "bearer.jwt.XQZ.sig"])
    assert source == TokenSource("jwt.XQZ.sig", "subprotocol")


def test_query_string() -> None:
    source = extract(query_string="room=1&access_token=jwt.XQZ.sig&x=")
    assert source == TokenSource("jwt.XQZ.sig", "query")


def test_query_string_percent_encoded() -> None:
    assert extract(query_string="access_token=XQZ%2Een").token == "XQZ.en"


def test_query_disabled() -> None:
    error = extract_error(query_string="access_token=jwt.XQZ.sig", allow_query=False)
    assert (error.error, error.detail, error.status) == (
        "invalid_request",
        "query-string tokens are disabled",
        400,
    )


def test_query_disabled_without_access_token_is_fine() -> None:
    source = extract([("authorization", "Bearer XQZ")], query_string="room=1", allow_query=False)
    assert source.carrier == "authorization"


@pytest.mark.parametrize(
    ("headers", "subprotocols", "query"),
    [
        ([("authorization", "Bearer XQZ1")], ["chat.v1", "bearer.XQZ2"], ""),
        ([("authorization", "Bearer XQZ1")], [], "access_token=XQZ2"),
        ([], ["chat.v1", "bearer.XQZ1"], "access_token=XQZ2"),
        ([("authorization", "Bearer XQZ1"), ("authorization", "Bearer XQZ1")], [], ""),
        ([], ["bearer.XQZ1", "bearer.XQZ2"], ""),
        ([], [], "access_token=XQZ1&access_token=XQZ1"),
    ],
)
def test_more_than_one_carrier(
    headers: list[tuple[str, str]], subprotocols: list[str], query: str
) -> None:
    error = extract_error(headers, subprotocols, query)
    assert (error.error, error.detail, error.status) == (
        "invalid_request",
        "token sent in more than one carrier",
        400,
    )


def test_missing_token() -> None:
    error = extract_error([("host", "x")], ["chat.v1"], "room=1")
    assert (error.error, error.detail, error.status) == ("invalid_token", "missing token", 401)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("", "empty authorization header"),
        ("   ", "empty authorization header"),
        ("Basic dG9rOnNlY3JldA==", "authorization scheme must be Bearer"),
        ("jwt.XQZ.sig", "authorization scheme must be Bearer"),
        ("BearerXQZ", "authorization scheme must be Bearer"),
        ("Bearer", "empty bearer token"),
        ("Bearer    ", "empty bearer token"),
        ("Bearer XQZ en", "malformed bearer token"),
        ("Bearer XQZ\ten", "malformed bearer token"),
    ],
)
def test_bad_authorization_header(value: str, detail: str) -> None:
    error = extract_error([("authorization", value)])
    assert (error.error, error.detail) == ("invalid_request", detail)


def test_empty_bearer_subprotocol() -> None:
    error = extract_error(subprotocols=["chat.v1", "bearer."])
    assert (error.error, error.detail) == ("invalid_request", "empty bearer subprotocol")


def test_empty_access_token() -> None:
    error = extract_error(query_string="access_token=")
    assert (error.error, error.detail) == ("invalid_request", "empty access_token parameter")


def test_extracted_token_verifies() -> None:
    token = mint_token(secret=SECRET, algorithm="HS256", subject="alice", ttl_s=60, now=NOW)
    for source in (
        extract([("authorization", f"Bearer {token}")]),
        extract(subprotocols=["chat.v1", f"bearer.{token}"]),
        extract(query_string=f"access_token={token}"),
    ):
        assert hs_verifier().verify(source.token, now=NOW).subject == "alice"
