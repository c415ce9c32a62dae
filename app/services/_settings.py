"""Immutable server settings.

One table of fields drives the flags, the ``ENCLAVE_*`` env vars and validation.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ..auth._tokens import ASYMMETRIC_ALGORITHMS
from ..auth._tokens import HMAC_ALGORITHMS as HS_ALGORITHMS

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "add_setting_arguments", "load_settings"]

ENV_PREFIX: Final = "ENCLAVE_"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
TRANSPORTS: Final = ("asgi", "lean")
#: The conformance echo route (``app/transports/_conformance.py``); reserved while it is on.
CONFORMANCE_ECHO_PATH: Final = "/conformance/echo"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the flag and env var."""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _opt_str(text: str) -> str | None:
    return text or None


def _workers(text: str) -> int:
    """A count of worker processes, or ``auto``: one per CPU."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    return int(text)


def _field(default: Any, parse: Callable[[str], Any], help: str, **kwargs: Any) -> Any:
    return attrs.field(default=default, metadata={"parse": parse, "help": help}, **kwargs)


@attrs.frozen(kw_only=True)
class Settings:
    """Every setting of the server. Built once at startup; never mutated."""

    host: str = _field("127.0.0.1", str, "interface to listen on")
    port: int = _field(8000, int, "TCP port (0 picks a free one)")
    path: str = _field("/ws", str, "WebSocket endpoint path")
    transport: str = _field("lean", str, "'asgi' (Quart-Trio, Hypercorn) or 'lean' (Trio)")
    jwt_secret: bytes | None = _field(
        None, str.encode, "HS256 shared secret (>= 32 bytes)", repr=False
    )
    jwt_secret_file: str | None = _field(None, _opt_str, "file holding the HS256 shared secret")
    jwks: str | None = _field(None, _opt_str, "JWKS file with RS256/ES256 public keys")
    algorithms: tuple[str, ...] = _field(
        (), _csv, "accepted JWT algorithms (default: HS256, or RS256,ES256 with --jwks)"
    )
    audience: str | None = _field(None, _opt_str, "required 'aud' claim")
    issuer: str | None = _field(None, _opt_str, "required 'iss' claim")
    leeway_s: float = _field(5.0, float, "clock-skew leeway for exp/nbf/iat, seconds")
    allow_query_token: bool = _field(True, _bool, "accept ?access_token= on the handshake")
    allowed_origins: tuple[str, ...] = _field(
        (), _csv, "comma-separated Origin allow-list (empty: any origin)"
    )
    max_connections: int = _field(10_000, int, "open WebSocket connections before 503")
    backlog: int = _field(1024, int, "listen backlog (pending TCP connections)")
    retry_after_s: int = _field(5, int, "Retry-After seconds on 503")
    max_message_bytes: int = _field(65_536, int, "largest client message (close 1009 above)")
    max_runs: int = _field(4, int, "concurrent runs per connection")
    rate_per_s: float = _field(20.0, float, "client messages per second per connection")
    rate_burst: int = _field(40, int, "burst of client messages above the rate")
    rate_abuse_limit: int = _field(
        40, int, "rate-limited messages in a row before close 1008 rate_limited"
    )
    connect_rate_per_s: float = _field(
        1.0, float, "WebSocket connections one user (sub) may open per second (0: no limit)"
    )
    connect_burst: int = _field(10, int, "connections one user may open at once above that rate")
    max_connections_per_user: int = _field(
        32, int, "WebSocket connections one user (sub) may hold open at once (0: no limit)"
    )
    abuse_cooldown_s: float = _field(
        10.0, float, "seconds a user closed 1008 rate_limited is refused with 429 (0: off)"
    )
    send_timeout_s: float = _field(10.0, float, "seconds a client may stall reads (1008)")
    ping_interval_s: float = _field(20.0, float, "seconds between keepalive pings")
    pong_timeout_s: float = _field(20.0, float, "seconds to wait for a pong before closing")
    idle_timeout_s: float = _field(300.0, float, "seconds without a client frame (close 1000)")
    open_timeout_s: float = _field(
        10.0, float, "seconds a client has to send its opening request (lean transport)"
    )
    shutdown_grace_s: float = _field(10.0, float, "seconds in-flight runs get on shutdown")
    run_timeout_s: float = _field(300.0, float, "longest a single run may take")
    agent: str = _field("echo", str, "agent: 'echo', 'openai' or 'module:attr' of an agent factory")
    agent_delay_ms: float = _field(0.0, float, "simulated model latency per agent step, ms")
    store: str = _field(
        "memory",
        str,
        "thread store: 'memory', 'sqlite:PATH' ('serve --dev': .enclave/threads.db) or"
        " 'redis://HOST:PORT/DB' ('rediss://' for TLS)",
    )
    resume_grace_s: float = _field(
        30.0, float, "seconds a run outlives its connection, for a resume (0: cancel at once)"
    )
    history_max_events: int = _field(10_000, int, "events kept per thread (0: no limit)")
    history_ttl_s: float = _field(0.0, float, "seconds an event is kept (0: forever)")
    history_memory_mb: float = _field(
        256.0, float, "MiB of events the memory store keeps in all (least recent threads go first)"
    )
    llm_base_url: str | None = _field(
        None, _opt_str, "--agent openai: chat-completions base URL, e.g. http://127.0.0.1:11434/v1"
    )
    llm_model: str | None = _field(None, _opt_str, "--agent openai: the model name")
    llm_api_key_env: str = _field(
        "OPENAI_API_KEY", str, "environment variable holding the API key (unset: no key)"
    )
    llm_api_key_file: str | None = _field(
        None, _opt_str, "file holding the API key (instead of --llm-api-key-env)"
    )
    llm_connect_timeout_s: float = _field(10.0, float, "seconds to connect to the model server")
    llm_read_timeout_s: float = _field(
        60.0, float, "longest silence of the model server within a response, seconds"
    )
    llm_system_prompt: str | None = _field(None, _opt_str, "system prompt sent first")
    llm_tools: tuple[str, ...] = _field(
        ("builtin",), _csv, "tools: 'builtin' (word_count, clock), 'module:attr'; empty: none"
    )
    llm_max_tool_rounds: int = _field(8, int, "tool-calling rounds in one run before failing")
    llm_max_connections: int = _field(
        100, int, "connections to the model server; more runs wait for one"
    )
    workers: int = _field(
        1,
        _workers,
        "server processes sharing the port ('auto': one per CPU; 1: no supervisor)",
    )
    log_level: str = _field("info", str, "debug, info, warning or error")
    dev_tokens: bool = _field(
        False,
        _bool,
        "DEV ONLY: POST /dev/token mints a token for any user (set by `enclave serve --dev`)",
    )
    log_format: str = _field("text", str, "'text' (one line a record) or 'json' (an object a line)")
    conformance_echo: bool = _field(
        False,
        _bool,
        f"TESTING ONLY: serve an echo WebSocket at {CONFORMANCE_ECHO_PATH}, no token needed",
    )

    def effective_algorithms(self) -> tuple[str, ...]:
        """The JWT algorithm allow-list, defaulted from the kind of key."""
        if self.algorithms:
            return self.algorithms
        return ("RS256", "ES256") if self.jwks else ("HS256",)

    def limits(self) -> dict[str, int | float]:
        """The limits a client is told about in ``connection_ready``."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_runs": self.max_runs,
            "rate_per_s": self.rate_per_s,
            "rate_burst": self.rate_burst,
            "idle_timeout_s": self.idle_timeout_s,
            "ping_interval_s": self.ping_interval_s,
        }

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first invalid setting."""
        for problem in _problems(self):
            raise ConfigError(problem)


def _names(name: str) -> str:
    return f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}"


def _store_spec_ok(spec: str) -> bool:
    """``memory``, ``sqlite:PATH`` or a Redis URL with a host (as ``open_backend`` takes)."""
    if spec == "memory" or (spec.startswith("sqlite:") and len(spec) > len("sqlite:")):
        return True
    scheme, sep, rest = spec.partition("://")
    return scheme in ("redis", "rediss") and bool(sep) and bool(rest)


def _problems(s: Settings) -> list[str]:
    out: list[str] = []
    positive = (
        "max_connections",
        "backlog",
        "max_message_bytes",
        "max_runs",
        "rate_burst",
        "rate_abuse_limit",
        "connect_burst",
        "llm_max_tool_rounds",
        "llm_max_connections",
    )
    for name in positive:
        if getattr(s, name) < 1:
            out.append(f"{_names(name)} must be >= 1")
    timed = (
        "rate_per_s",
        "send_timeout_s",
        "ping_interval_s",
        "pong_timeout_s",
        "idle_timeout_s",
        "open_timeout_s",
        "run_timeout_s",
        "llm_connect_timeout_s",
        "llm_read_timeout_s",
    )
    for name in timed:
        value = getattr(s, name)
        if not (math.isfinite(value) and value > 0):
            out.append(f"{_names(name)} must be a positive number")
    for name in (
        "leeway_s",
        "shutdown_grace_s",
        "agent_delay_ms",
        "connect_rate_per_s",
        "abuse_cooldown_s",
        "resume_grace_s",
        "history_ttl_s",
        "history_memory_mb",
    ):
        value = getattr(s, name)
        if not (math.isfinite(value) and value >= 0):
            out.append(f"{_names(name)} must be a number >= 0")
    if not 0 <= s.port <= 65_535:
        out.append(f"{_names('port')} must be 0..65535")
    if s.max_connections_per_user < 0:
        out.append(f"{_names('max_connections_per_user')} must be >= 0")
    if s.history_max_events < 0:
        out.append(f"{_names('history_max_events')} must be >= 0")
    if not _store_spec_ok(s.store):
        out.append(f"{_names('store')} must be 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'")
    if s.workers < 1:
        out.append(f"{_names('workers')} must be >= 1 (or 'auto')")
    elif s.workers > 1 and s.store.startswith("sqlite:"):
        # redis:// (shared by every worker) and memory (one store per worker) are fine.
        out.append(
            f"{_names('workers')} > 1: one SQLite file cannot be shared by several workers;"
            " use --store redis://..."
        )
    if s.retry_after_s < 0:
        out.append(f"{_names('retry_after_s')} must be >= 0")
    if not s.path.startswith("/"):
        out.append(f"{_names('path')} must start with '/'")
    if s.conformance_echo and s.path == CONFORMANCE_ECHO_PATH:
        out.append(f"{_names('path')} cannot be {CONFORMANCE_ECHO_PATH} with --conformance-echo")
    if s.transport not in TRANSPORTS:
        out.append(f"{_names('transport')} must be one of {', '.join(TRANSPORTS)}")
    if s.agent == "openai":
        if not s.llm_base_url:
            out.append(f"--agent openai needs {_names('llm_base_url')}")
        elif not s.llm_base_url.startswith(("http://", "https://")):
            out.append(f"{_names('llm_base_url')} must start with http:// or https://")
        if not s.llm_model:
            out.append(f"--agent openai needs {_names('llm_model')}")
    if s.log_level not in LOG_LEVELS:
        out.append(f"{_names('log_level')} must be one of {', '.join(LOG_LEVELS)}")
    if s.log_format not in LOG_FORMATS:
        out.append(f"{_names('log_format')} must be one of {', '.join(LOG_FORMATS)}")
    keys = [n for n in ("jwt_secret", "jwt_secret_file", "jwks") if getattr(s, n)]
    if len(keys) != 1:
        out.append(
            "configure exactly one key source: "
            + ", ".join(_names(n) for n in ("jwt_secret", "jwt_secret_file", "jwks"))
            + " (or run `enclave serve --dev`)"
        )
    if s.jwt_secret is not None and len(s.jwt_secret) < 32:
        out.append(f"{_names('jwt_secret')} must be at least 32 bytes")
    algorithms = set(s.effective_algorithms())
    unknown = algorithms - HS_ALGORITHMS - ASYMMETRIC_ALGORITHMS
    if unknown:
        out.append(f"{_names('algorithms')}: unsupported {', '.join(sorted(unknown))}")
    elif s.jwks and algorithms & HS_ALGORITHMS:
        out.append(f"{_names('algorithms')}: HS algorithms cannot be used with --jwks")
    elif not s.jwks and algorithms - HS_ALGORITHMS:
        out.append(f"{_names('algorithms')}: only HS algorithms work with a shared secret")
    return out


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting; unset flags stay ``None`` so env vars can apply."""
    for field in attrs.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        env = ENV_PREFIX + field.name.upper()
        default = field.default
        shown = "" if field.name == "jwt_secret" else f", default {default!r}"
        parser.add_argument(
            flag,
            dest=field.name,
            default=None,
            metavar=field.name.split("_")[-1].upper(),
            help=f"{field.metadata['help']} [{env}{shown}]",
        )


def load_settings(
    values: Mapping[str, str | None], environ: Mapping[str, str], **overrides: Any
) -> Settings:
    """Build validated settings: flag values win over ``ENCLAVE_*`` env vars over defaults.

    ``overrides`` are already-typed values (used by the CLI and by tests).
    """
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(Settings):
        raw = values.get(field.name)
        source = "--" + field.name.replace("_", "-")
        if raw is None:
            raw = environ.get(ENV_PREFIX + field.name.upper())
            source = ENV_PREFIX + field.name.upper()
        if raw is None:
            continue
        try:
            kwargs[field.name] = field.metadata["parse"](raw)
        except ValueError as exc:
            shown = "<hidden>" if field.name == "jwt_secret" else repr(raw)
            raise ConfigError(f"{source}: invalid value {shown}: {exc}") from None
    kwargs.update(overrides)
    settings = Settings(**kwargs)
    settings.validate()
    return settings
