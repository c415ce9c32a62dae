"""TokenMinter: tokens signed with the server's key are what its verifier accepts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from app import ConfigError, Settings, build_services
from app.services._build import build_verifier
from app.web import DEV_TOKEN_TTL_S, TokenMinter

SECRET = b"dev-token-secret-0123456789abcdefghij"


def test_a_secret_mints_tokens_the_verifier_accepts() -> None:
    settings = Settings(jwt_secret=SECRET, audience="chat", issuer="enclave")
    now = time.time()
    token = TokenMinter.from_settings(settings).mint("carol", now=now)
    claims = build_verifier(settings).verify(token, now=now)
    assert claims.subject == "carol"
    assert claims.expires_at == pytest.approx(now + DEV_TOKEN_TTL_S, abs=1)


def test_a_secret_file_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    settings = Settings(jwt_secret_file=str(path))
    verifier = build_services(settings).verifier
    minter = TokenMinter.from_settings(settings)
    path.unlink()  # minting no longer needs the file
    token = minter.mint("dave", now=time.time(), ttl_s=60)
    assert verifier.verify(token, now=time.time()).subject == "dave"
    assert "dev-token-secret" not in repr(minter)


def test_a_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TokenMinter.from_settings(Settings(jwt_secret_file=str(tmp_path / "none")))


def test_a_jwks_with_a_private_key_signs(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    settings = Settings(jwks=str(path), algorithms=("ES256",))
    token = TokenMinter.from_settings(settings).mint("erin", now=time.time())
    assert build_verifier(settings).verify(token, now=time.time()).subject == "erin"


def test_a_jwks_of_public_keys_cannot_sign(tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    minter = TokenMinter.from_settings(Settings(jwks=str(path), algorithms=("ES256",)))
    with pytest.raises(ValueError, match="private"):
        minter.mint("frank", now=time.time())
