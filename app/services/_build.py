"""What ``serve()`` builds once for the whole process: the verifier and the services."""

from __future__ import annotations

import logging
from pathlib import Path

from ..agents._agent import AgentLoadError, AgentOptions, load_agent
from ..auth._tokens import AuthConfig, TokenVerifier, load_jwks
from ._services import Services
from ._settings import ConfigError, Settings

__all__ = ["LOGGER_NAME", "build_services", "build_verifier", "read_secret"]

LOGGER_NAME = "trio_enclave"


def build_verifier(settings: Settings) -> TokenVerifier:
    """The token verifier for the configured key; raises ConfigError if the key is unusable."""
    config = AuthConfig(
        algorithms=settings.effective_algorithms(),
        audience=settings.audience,
        issuer=settings.issuer,
        leeway_s=settings.leeway_s,
    )
    try:
        if settings.jwks:
            return TokenVerifier.from_jwks(load_jwks(settings.jwks), config)
        return TokenVerifier.from_secret(read_secret(settings), config)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the token key: {exc}") from None


def read_secret(settings: Settings) -> bytes:
    """The HS secret, from the setting or its file (trailing newline stripped)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret
    if settings.jwt_secret_file is None:
        raise ConfigError("no JWT secret configured")
    try:
        secret = Path(settings.jwt_secret_file).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"--jwt-secret-file: {exc.strerror}: {exc.filename}") from None
    if len(secret) < 32:
        raise ConfigError("--jwt-secret-file: the secret must be at least 32 bytes")
    return secret


def build_services(settings: Settings, log: logging.Logger | None = None) -> Services:
    """Everything connections share, all immutable. Raises ConfigError."""
    log = log or logging.getLogger(LOGGER_NAME)
    try:
        agent = load_agent(settings.agent, AgentOptions(delay_s=settings.agent_delay_ms / 1000))
    except AgentLoadError as exc:
        raise ConfigError(str(exc)) from None
    return Services(settings=settings, verifier=build_verifier(settings), agent=agent, log=log)
