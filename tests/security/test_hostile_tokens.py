"""Hostile tokens, on both transports: always 401 ``invalid_token`` with its reason, never 500.

Each token is tried twice on a live server: in the handshake (401, ``WWW-Authenticate:
Bearer error="invalid_token"``, the JSON body naming the reason) and in an ``auth``
message on an open connection (an ``error`` ``invalid_token`` with the same reason; the
connection stays). A token the server accepts is used first as the control, and a fresh
client completes a chat turn at the end. Claims are signed with the server's own key, so
each token fails for exactly the reason under test. The verifier itself is unit-tested
in ``tests/app/test_auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest
from joserfc.jwk import RSAKey

from app import mint_token

if TYPE_CHECKING:
    from tests.security.conftest import E2E, Chat, Hostile, LiveServer

AUDIENCE: Final = "enclave-chat"
ISSUER: Final = "https://issuer.example"
KID: Final = "k1"
NOT_A_NAME: Final = "claim sub must be a non-empty string"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: str, key: bytes | None) -> str:
    """A compact JWS over ``payload`` exactly as given: HMAC-SHA256 with ``key``, or unsigned."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload.encode())}"
    signature = b"" if key is None else hmac.digest(key, signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64url(signature)}"


@attrs.frozen
class Keys:
    """What the attacks are built from: the HS secret and a JWKS server's RSA key."""

    secret: bytes
    rsa: RSAKey
    jwks_file: Path

    def rs256(self, claims: dict[str, Any] | None = None, *, sub: str = "mallory") -> str:
        private = {"keys": [self.rsa.as_dict(private=True, kid=KID)]}
        now = time.time()
        return mint_token(
            jwks=private, algorithm="RS256", subject=sub, ttl_s=600, now=now, extra_claims=claims
        )


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture
def keys(e2e: E2E, rsa_key: RSAKey, tmp_path: Path) -> Keys:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [rsa_key.as_dict(private=False, kid=KID)]}))
    return Keys(e2e.secret, rsa_key, jwks_file)


def hs(claims: str, keys: Keys, *, alg: str = "HS256") -> str:
    return forge({"alg": alg, "typ": "JWT"}, claims, keys.secret)


def claims(**overrides: Any) -> str:
    now = int(time.time())
    values: dict[str, Any] = {"sub": "mallory", "iat": now, "exp": now + 600}
    values.update(overrides)
    return json.dumps({k: v for k, v in values.items() if v is not None})


def with_exp(raw: str) -> str:
    """Claims whose ``exp`` is the JSON text ``raw`` (which json.dumps cannot always write)."""
    return '{"sub": "mallory", "exp": ' + raw + "}"


def tampered(keys: Keys) -> str:
    header, _, signature = hs(claims(), keys).split(".")
    return f"{header}.{b64url(claims(sub='admin').encode())}.{signature}"


# attack -> (server: "hs" | "jwks", token builder, the documented reason).
Attack = tuple[str, Callable[[Keys], str], str]
ATTACKS: Final[dict[str, Attack]] = {
    "alg-none": ("hs", lambda k: forge({"alg": "none"}, claims(), None), "algorithm not allowed"),
    "alg-NONE-signed": ("hs", lambda k: hs(claims(), k, alg="NONE"), "algorithm not allowed"),
    "alg-HS512-not-allowed": (
        "hs",
        lambda k: hs(claims(), k, alg="HS512"),
        "algorithm not allowed",
    ),
    "hs256-signed-with-the-rsa-public-key-pem": (
        "jwks",
        lambda k: forge({"alg": "HS256", "kid": KID}, claims(), k.rsa.as_pem(private=False)),
        "algorithm not allowed",
    ),
    "rs256-token-on-a-secret-server": ("hs", lambda k: k.rs256(), "algorithm not allowed"),
    "unknown-kid": (
        "jwks",
        lambda k: forge({"alg": "RS256", "kid": "k2"}, claims(), None),
        "unknown key id",
    ),
    "expired": (
        "hs",
        lambda k: hs(claims(iat=int(time.time()) - 3600, exp=int(time.time()) - 60), k),
        "token expired",
    ),
    "not-yet-valid": (
        "hs",
        lambda k: hs(claims(nbf=int(time.time()) + 3600), k),
        "token not yet valid",
    ),
    "issued-in-the-future": (
        "hs",
        lambda k: hs(claims(iat=int(time.time()) + 3600), k),
        "token issued in the future",
    ),
    "wrong-audience": ("hs", lambda k: hs(claims(aud="another-service"), k), "wrong audience"),
    "wrong-issuer": (
        "hs",
        lambda k: hs(claims(aud=AUDIENCE, iss="https://evil"), k),
        "wrong issuer",
    ),
    "tampered-payload": ("hs", tampered, "bad signature"),
    "signed-with-another-secret": (
        "hs",
        lambda k: forge({"alg": "HS256"}, claims(), b"another-secret-0123456789abcdefghij"),
        "bad signature",
    ),
    "missing-sub": ("hs", lambda k: hs(claims(sub=None), k), "missing claim: sub"),
    "sub-is-a-number": ("hs", lambda k: hs(claims(sub=123), k), NOT_A_NAME),
    "sub-is-a-list": ("hs", lambda k: hs(claims(sub=["a"]), k), NOT_A_NAME),
    "sub-is-an-object": ("hs", lambda k: hs(claims(sub={"id": "a"}), k), NOT_A_NAME),
    "sub-is-true": ("hs", lambda k: hs(claims(sub=True), k), NOT_A_NAME),
    "sub-is-empty": ("hs", lambda k: hs(claims(sub=""), k), NOT_A_NAME),
    "sub-too-long": (
        "hs",
        lambda k: hs(claims(sub="s" * 257), k),
        "claim sub is longer than 256 characters",
    ),
    "missing-exp": ("hs", lambda k: hs(claims(exp=None), k), "missing claim: exp"),
    "exp-huge-int": ("hs", lambda k: hs(with_exp("1" + "0" * 30), k), "claim exp is out of range"),
    "exp-1e400": ("hs", lambda k: hs(with_exp("1e400"), k), "claim exp is out of range"),
    "exp-huge-float": ("hs", lambda k: hs(with_exp("1e300"), k), "claim exp is out of range"),
    "exp-negative": ("hs", lambda k: hs(with_exp("-1"), k), "claim exp is out of range"),
    "exp-negative-float": ("hs", lambda k: hs(with_exp("-0.5"), k), "claim exp is out of range"),
    "exp-string": ("hs", lambda k: hs(with_exp('"9999999999"'), k), "claim exp must be a number"),
    "exp-true": ("hs", lambda k: hs(with_exp("true"), k), "claim exp must be a number"),
    "exp-NaN": ("hs", lambda k: hs(with_exp("NaN"), k), "malformed token"),
    "exp-5000-digits": ("hs", lambda k: hs(with_exp("9" * 5_000), k), "malformed token"),
    "duplicate-sub": (
        "hs",
        lambda k: hs('{"sub": "mallory", "sub": "admin", "exp": 9999999999}', k),
        "malformed token",
    ),
    "payload-not-an-object": ("hs", lambda k: hs("[1, 2]", k), "malformed token"),
    "not-a-jws": ("hs", lambda k: "not.a.token", "malformed token"),
    "non-ascii": ("hs", lambda k: "é" + hs(claims(), k), "malformed token"),
}


def server_overrides(kind: str, keys: Keys) -> dict[str, Any]:
    if kind == "jwks":
        return {"jwt_secret": None, "jwks": str(keys.jwks_file)}
    return {"audience": AUDIENCE, "issuer": ISSUER}


def good_token(kind: str, keys: Keys, e2e: E2E, sub: str) -> str:
    if kind == "jwks":
        return keys.rs256(sub=sub)
    return e2e.token(sub, audience=AUDIENCE, issuer=ISSUER)


async def refuse(live: LiveServer, chat: Chat, bad: str, reason: str) -> None:
    """``bad`` is refused in the handshake and in an ``auth`` message, for ``reason``."""
    rejection = await live.reject(bad)
    assert rejection.status == 401
    assert rejection.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert rejection.headers["content-type"] == "application/json"
    assert rejection.json() == {"error": "invalid_token", "detail": reason}
    await chat.send({"type": "auth", "token": bad})
    error = await chat.expect("error")
    assert (error["code"], error["message"]) == ("invalid_token", reason)
    await chat.roundtrip()  # the connection stays


# Token checks are the transports' shared handshake decision: each attack runs on the
# default transport, and the test after it sends them all to the ASGI transport at once.
@pytest.mark.parametrize("transport", ["lean"])
@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_hostile_token_is_401_and_an_auth_error(
    attack: str, e2e: E2E, hostile: Hostile, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    kind, build, reason = ATTACKS[attack]
    async with e2e.server(**server_overrides(kind, keys)) as live:
        async with live.chat(good_token(kind, keys, e2e, "mallory")) as chat:
            await refuse(live, chat, build(keys), reason)
        await hostile.healthy(live, good_token(kind, keys, e2e, "bystander"))
    assert hostile.server_errors(caplog) == []


@pytest.mark.parametrize("transport", ["asgi"])
@pytest.mark.parametrize("kind", ["hs", "jwks"])
async def test_every_hostile_token_is_refused_alike_on_asgi(
    kind: str, e2e: E2E, hostile: Hostile, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    attacks = [(build, reason) for k, build, reason in ATTACKS.values() if k == kind]
    # Two frames per attack on one connection: lift the rate limit out of the way.
    async with e2e.server(**server_overrides(kind, keys), rate_burst=1_000) as live:
        async with live.chat(good_token(kind, keys, e2e, "mallory")) as chat:
            for build, reason in attacks:
                await refuse(live, chat, build(keys), reason)
        await hostile.healthy(live, good_token(kind, keys, e2e, "bystander"))
    assert hostile.server_errors(caplog) == []


async def test_float_exp_within_range_is_accepted(e2e: E2E, hostile: Hostile) -> None:
    """The control of the ``exp`` attacks: a fractional timestamp is a valid NumericDate."""
    token = e2e.token(extra_claims={"exp": time.time() + 600.25})
    async with e2e.server() as live, live.chat(token) as chat:
        assert chat.ready["user_id"] == "alice"
        await hostile.healthy(live)


@pytest.mark.parametrize("carrier", ["authorization", "subprotocol", "query"])
async def test_token_over_8_kib_is_401_token_too_large(
    carrier: str, e2e: E2E, hostile: Hostile
) -> None:
    big = "a" * 8193  # one over the limit; rejected before any parsing
    async with e2e.server() as live:
        if carrier == "authorization":
            rejection = await live.reject(big)
        elif carrier == "subprotocol":
            rejection = await live.reject(subprotocols=["chat.v1", f"bearer.{big}"])
        else:
            rejection = await live.reject(query=f"access_token={big}")
        assert rejection.status == 401
        assert rejection.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert rejection.json() == {"error": "invalid_token", "detail": "token too large"}
        await hostile.healthy(live)


async def test_token_over_the_head_limit(e2e: E2E, hostile: Hostile) -> None:
    """A 20 KiB token: over the lean transport's 16 KiB request head (431) first."""
    async with e2e.server() as live:
        reply = await hostile.exchange(
            live, hostile.upgrade_request(f"Authorization: Bearer {'a' * 20_480}")
        )
        if e2e.transport == "lean":
            assert reply.status == 431
            assert reply.json()["error"] == "request_header_fields_too_large"
        else:  # Hypercorn takes a head it reads at once; the token check refuses it
            assert reply.status == 401
            assert reply.json() == {"error": "invalid_token", "detail": "token too large"}
        await hostile.healthy(live)


async def test_auth_message_with_a_token_over_8_kib_is_invalid_message(
    e2e: E2E, hostile: Hostile
) -> None:
    """In an ``auth`` message the limit is the message's: ``invalid_message`` on ``token``."""
    async with e2e.server() as live, live.chat() as chat:
        await chat.send({"type": "auth", "token": "a" * 8193})
        error = await chat.expect("error")
        assert (error["code"], error["field"]) == ("invalid_message", "token")
        await chat.roundtrip()
        await hostile.healthy(live)


#: Two carriers at once: (Authorization, subprotocols, query) with "good"/"bad" tokens.
CARRIERS: Final = {
    "authorization-good-subprotocol-bad": ("good", ["bad"], []),
    "authorization-bad-subprotocol-good": ("bad", ["good"], []),
    "authorization-good-query-bad": ("good", [], ["bad"]),
    "authorization-bad-query-good": ("bad", [], ["good"]),
    "subprotocol-good-query-bad": (None, ["good"], ["bad"]),
    "subprotocol-bad-query-good": (None, ["bad"], ["good"]),
    "two-subprotocols-good-bad": (None, ["good", "bad"], []),
    "two-query-parameters-bad-good": (None, [], ["bad", "good"]),
    "all-three-good": ("good", ["good"], ["good"]),
}


@pytest.mark.parametrize("case", list(CARRIERS))
async def test_token_in_two_carriers_is_400_whatever_they_hold(
    case: str, e2e: E2E, hostile: Hostile
) -> None:
    """No precedence: more than one token is ``invalid_request``, even if one is valid."""
    header, protocols, params = CARRIERS[case]
    tokens = {"good": e2e.token("mallory"), "bad": e2e.token("mallory", ttl_s=1, now=1.0)}
    async with e2e.server() as live:
        rejection = await live.reject(
            tokens[header] if header is not None else None,
            subprotocols=["chat.v1", *(f"bearer.{tokens[p]}" for p in protocols)],
            query="&".join(f"access_token={tokens[p]}" for p in params),
        )
        assert rejection.status == 400
        assert rejection.headers["www-authenticate"] == 'Bearer error="invalid_request"'
        assert rejection.json() == {
            "error": "invalid_request",
            "detail": "token sent in more than one carrier",
        }
        await hostile.healthy(live)


async def test_two_authorization_headers_are_400(e2e: E2E, hostile: Hostile) -> None:
    async with e2e.server() as live:
        bad = e2e.token("mallory", ttl_s=1, now=1.0)
        rejection = await live.reject(
            e2e.token("mallory"), headers=[("Authorization", f"Bearer {bad}")]
        )
        assert (rejection.status, rejection.json()["error"]) == (400, "invalid_request")
        await hostile.healthy(live)
