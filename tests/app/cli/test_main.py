import os
import stat
import time
from pathlib import Path

import pytest

from app import AuthConfig, TokenVerifier
from app.cli._main import ensure_dev_secret, main

SECRET = "c" * 32


def test_token_mints_with_configured_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "alice", "--ttl", "60"], {"ENCLAVE_JWT_SECRET": SECRET}) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier.from_secret(SECRET.encode(), AuthConfig(algorithms=("HS256",)))
    claims = verifier.verify(token, now=time.time())
    assert claims.subject == "alice"
    assert claims.expires_at - time.time() == pytest.approx(60, abs=5)


def test_token_with_audience_and_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"ENCLAVE_JWT_SECRET": SECRET}
    assert main(["token", "--sub", "bob", "--audience", "chat", "--issuer", "me"], env) == 0
    token = capsys.readouterr().out.strip()
    config = AuthConfig(algorithms=("HS256",), audience="chat", issuer="me")
    assert TokenVerifier.from_secret(SECRET.encode(), config).verify(token, now=time.time())


def test_token_with_dev_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["token", "--dev", "--sub", "carol"], {}) == 0
    secret = (tmp_path / ".enclave" / "dev-secret").read_bytes().strip()
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier.from_secret(secret, AuthConfig(algorithms=("HS256",)))
    assert verifier.verify(token, now=time.time()).subject == "carol"


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["serve", "--port", "99999"], {"ENCLAVE_JWT_SECRET": SECRET}, "--port"),
        (["serve"], {}, "exactly one key source"),
        (["serve", "--jwt-secret", "short"], {}, "at least 32 bytes"),
        (["serve", "--jwt-secret-file", "/nonexistent/secret"], {}, "--jwt-secret-file"),
        (["serve", "--agent", "nope"], {"ENCLAVE_JWT_SECRET": SECRET}, "--agent"),
        (["serve", "--jwks", "/nonexistent/jwks.json"], {}, "cannot load the token key"),
        (["token", "--sub", "x"], {}, "exactly one key source"),
        (
            ["serve", "--workers", "2", "--store", "sqlite:x.db"],
            {"ENCLAVE_JWT_SECRET": SECRET},
            "one SQLite file cannot be shared by several workers",
        ),
        (["serve", "--workers", "many"], {"ENCLAVE_JWT_SECRET": SECRET}, "--workers"),
    ],
)
def test_bad_config_exits_2(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env) == 2
    err = capsys.readouterr().err
    assert err.startswith("enclave: configuration error:")
    assert fragment in err


def test_short_secret_file_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("short\n")
    assert main(["serve", "--jwt-secret-file", str(secret_file)], {}) == 2
    assert "at least 32 bytes" in capsys.readouterr().err


def test_chat_requires_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat"], {}) == 2
    assert "--token" in capsys.readouterr().err


def test_dev_secret_is_private_and_stable(tmp_path: Path) -> None:
    path = ensure_dev_secret(tmp_path / "d" / "secret")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    first = path.read_text()
    assert len(first.strip()) >= 32
    assert ensure_dev_secret(path).read_text() == first


def test_serve_dev_turns_dev_tokens_on_and_nothing_else_does() -> None:
    from app.cli._main import _parser, _settings

    env = {"ENCLAVE_JWT_SECRET": SECRET}
    assert _settings(_parser().parse_args(["serve", "--dev"]), env).dev_tokens is True
    assert _settings(_parser().parse_args(["serve"]), env).dev_tokens is False
    token_args = _parser().parse_args(["token", "--dev", "--sub", "a"])
    assert _settings(token_args, env).dev_tokens is False
