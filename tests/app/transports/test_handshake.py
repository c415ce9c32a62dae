import json
import time

import pytest

from app import AuthConfig, HandshakeInfo, Settings, TokenVerifier, mint_token
from app.transports._handshake import Accept, Reject, evaluate_handshake, unavailable

SECRET = b"h" * 32
NOW = time.time()


def info(
    *,
    headers: tuple[tuple[str, str], ...] = (),
    subprotocols: tuple[str, ...] = (),
    query: str = "",
) -> HandshakeInfo:
    return HandshakeInfo("/ws", headers, subprotocols, query)


def decide(hs: HandshakeInfo, **overrides: object) -> Accept | Reject:
    settings = Settings(jwt_secret=SECRET, **overrides)  # type: ignore[arg-type]
    verifier = TokenVerifier.from_secret(SECRET, AuthConfig(algorithms=("HS256",)))
    return evaluate_handshake(hs, settings=settings, verifier=verifier, now=NOW)


def token(sub: str = "alice") -> str:
    return mint_token(secret=SECRET, algorithm="HS256", subject=sub, ttl_s=60, now=NOW)


def test_bearer_header_accepted_without_subprotocol() -> None:
    result = decide(info(headers=(("authorization", f"Bearer {token()}"),)))
    assert isinstance(result, Accept)
    assert (result.claims.subject, result.carrier, result.subprotocol) == (
        "alice",
        "authorization",
        None,
    )


def test_subprotocol_carrier_selects_chat_v1() -> None:
    result = decide(info(subprotocols=("chat.v1", f"bearer.{token()}")))
    assert isinstance(result, Accept)
    assert (result.carrier, result.subprotocol) == ("subprotocol", "chat.v1")


def test_query_carrier() -> None:
    result = decide(info(query=f"access_token={token()}"))
    assert isinstance(result, Accept)
    assert result.carrier == "query"


def test_missing_token_is_401_with_challenge() -> None:
    result = decide(info())
    assert isinstance(result, Reject)
    assert result.status == 401
    assert ("www-authenticate", 'Bearer error="invalid_token"') in result.all_headers()
    assert json.loads(result.body()) == {"error": "invalid_token", "detail": "missing token"}


def test_two_carriers_is_400() -> None:
    tok = token()
    result = decide(
        info(headers=(("authorization", f"Bearer {tok}"),), query=f"access_token={tok}")
    )
    assert isinstance(result, Reject)
    assert (result.status, result.error) == (400, "invalid_request")


def test_subprotocol_without_chat_v1_is_400() -> None:
    result = decide(
        info(subprotocols=("other.v2",), headers=(("authorization", f"Bearer {token()}"),))
    )
    assert isinstance(result, Reject)
    assert (result.status, result.error) == (400, "unsupported_subprotocol")


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [("https://app.example", True), ("HTTPS://APP.EXAMPLE", True), ("https://evil.example", False)],
)
def test_origin_allow_list(origin: str, accepted: bool) -> None:
    headers = (("origin", origin), ("authorization", f"Bearer {token()}"))
    result = decide(info(headers=headers), allowed_origins=("https://app.example",))
    if accepted:
        assert isinstance(result, Accept)
    else:
        assert isinstance(result, Reject)
        assert (result.status, result.error) == (403, "forbidden_origin")


def test_no_origin_header_is_allowed() -> None:
    headers = (("authorization", f"Bearer {token()}"),)
    assert isinstance(decide(info(headers=headers), allowed_origins=("https://a",)), Accept)


def test_unavailable_has_retry_after() -> None:
    reject = unavailable("server is full", 7)
    assert reject.status == 503
    assert ("retry-after", "7") in reject.all_headers()
    assert json.loads(reject.body())["detail"] == "server is full"


def test_header_lookup() -> None:
    hs = info(headers=(("x", "1"), ("x", "2")))
    assert hs.header("x") == "1"
    assert hs.header("y") is None
