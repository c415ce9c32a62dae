"""What ``serve()`` builds once for the whole process: the verifier and the services."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..agents._agent import AgentLoadError, AgentOptions, LLMOptions, load_agent
from ..auth._tokens import AuthConfig, TokenVerifier, load_jwks
from ._services import Services
from ._settings import ConfigError, Settings

__all__ = [
    "LOGGER_NAME",
    "agent_options",
    "build_services",
    "build_verifier",
    "read_llm_key",
    "read_secret",
]

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


def read_llm_key(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The model server's API key: from ``--llm-api-key-file``, else the variable named by
    ``--llm-api-key-env`` (None if unset: servers such as Ollama need none)."""
    if settings.llm_api_key_file is None:
        return environ.get(settings.llm_api_key_env) or None
    try:
        key = Path(settings.llm_api_key_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise ConfigError(f"--llm-api-key-file: {reason}: {settings.llm_api_key_file}") from None
    if not key:
        raise ConfigError("--llm-api-key-file: the file is empty")
    return key


def agent_options(settings: Settings, environ: Mapping[str, str]) -> AgentOptions:
    """What the agent factory gets; reads the API key only for ``--agent openai``."""
    llm = LLMOptions(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=read_llm_key(settings, environ) if settings.agent == "openai" else None,
        connect_timeout_s=settings.llm_connect_timeout_s,
        read_timeout_s=settings.llm_read_timeout_s,
        system_prompt=settings.llm_system_prompt,
        tools=settings.llm_tools,
        max_tool_rounds=settings.llm_max_tool_rounds,
        max_connections=settings.llm_max_connections,
    )
    return AgentOptions(delay_s=settings.agent_delay_ms / 1000, llm=llm)


def build_services(
    settings: Settings,
    log: logging.Logger | None = None,
    environ: Mapping[str, str] | None = None,
) -> Services:
    """Everything connections share, all immutable. Raises ConfigError.

    ``environ`` (default ``os.environ``) is where the model server's API key is read.
    """
    log = log or logging.getLogger(LOGGER_NAME)
    verifier = build_verifier(settings)  # first: a bad key leaves no agent to close
    options = agent_options(settings, os.environ if environ is None else environ)
    try:
        agent = load_agent(settings.agent, options)
    except AgentLoadError as exc:
        raise ConfigError(str(exc)) from None
    return Services(settings=settings, verifier=verifier, agent=agent, log=log)
