"""``serve()``: build the process's services, run a transport, drain on signals.

``settings.transport`` picks Hypercorn's trio worker serving the Quart-Trio app
(``asgi``) or Trio sockets with websockets' sans-IO protocol (``lean``).
"""

from __future__ import annotations

import logging
import math
import signal
from functools import partial
from pathlib import Path

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ._accept_log import throttle_accept_errors
from ._admission import SubjectGuard
from ._agent import AgentLoadError, AgentOptions, load_agent
from ._asgi import create_app
from ._auth import AuthConfig, TokenVerifier, load_jwks
from ._conformance import ECHO_MAX_MESSAGE_BYTES
from ._hypercorn import contain_connection_errors
from ._lean import serve_lean
from ._services import ServerLifecycle, Services
from ._session import CLOSE_TIMEOUT_S
from ._settings import ConfigError, Settings

__all__ = ["RunningServer", "build_services", "build_verifier", "serve"]

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


def hypercorn_config(settings: Settings, log: logging.Logger) -> Config:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    # Hypercorn's default of 100 overflows when hundreds of users connect at once.
    config.backlog = settings.backlog
    config.accesslog = None
    config.errorlog = log.getChild("hypercorn")
    # Hypercorn counts characters and closes 1009 without a reason; the session
    # counts UTF-8 bytes and says ``message_too_big``. Hypercorn's cap stays as a
    # backstop at the most bytes a message within the limit can have in characters.
    config.websocket_max_message_size = settings.max_message_bytes * 4
    if settings.conformance_echo:  # the echo route's messages (app/_conformance.py)
        config.websocket_max_message_size = max(
            config.websocket_max_message_size, ECHO_MAX_MESSAGE_BYTES
        )
    # No Hypercorn pings: its trio worker half-closes a failed connection without its
    # send lock, and a ping written at that moment raises BusyResourceError out of
    # Hypercorn's serve(), stopping the whole server (one bad frame right after the
    # upgrade did it within 15 tries). Hypercorn ignores pongs anyway; the session's
    # idle timeout closes a silent peer, and the read timeout drops it after that.
    config.websocket_ping_interval = None
    config.read_timeout = math.ceil(settings.idle_timeout_s + settings.pong_timeout_s)
    config.graceful_timeout = CLOSE_TIMEOUT_S
    return config


@attrs.frozen
class RunningServer:
    """Handed to ``task_status`` once the server listens."""

    url: str
    port: int
    lifecycle: ServerLifecycle

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def shutdown(self, grace_s: float) -> None:
        """Begin the graceful shutdown a SIGTERM would."""
        self.lifecycle.begin_drain(grace_s)


async def serve(
    settings: Settings,
    *,
    services: Services | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until shut down, then return.

    With ``handle_signals``, SIGTERM/SIGINT begin a graceful shutdown: ``/ready``
    turns 503, new handshakes get 503, runs get ``shutdown_grace_s`` to finish,
    then every connection is closed 1001; a second signal skips the grace.
    Cancellation: the server stops at once; connections are dropped without a
    close frame.
    """
    services = services or build_services(settings)
    lifecycle = ServerLifecycle(
        max_connections=settings.max_connections,
        subjects=SubjectGuard(
            settings.connect_rate_per_s, settings.connect_burst, settings.abuse_cooldown_s
        ),
    )
    transport = serve_lean if settings.transport == "lean" else _serve_asgi

    async with trio.open_nursery() as outer:
        await outer.start(lifecycle.timer.run)
        if handle_signals:
            outer.start_soon(
                _watch_signals, lifecycle, settings.shutdown_grace_s, outer, services.log
            )
        # Out of file descriptors, accept() fails and is retried every 0.1 s: log it rarely.
        with throttle_accept_errors():
            async with trio.open_nursery() as inner:
                url: str = await inner.start(transport, services, lifecycle)
                port = int(url.rsplit(":", 1)[1])
                services.log.info("listening on %s (websocket path %s)", url, settings.path)
                task_status.started(RunningServer(url=url, port=port, lifecycle=lifecycle))
        services.log.info("stopped")
        outer.cancel_scope.cancel()


async def _serve_asgi(
    services: Services,
    lifecycle: ServerLifecycle,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn serving the Quart-Trio app; hands ``task_status`` the URL; returns after a drain.

    Cancellation: stops at once; connections are dropped without a close frame.
    """
    settings = services.settings
    app = create_app(services, lifecycle)
    config = hypercorn_config(settings, services.log)
    contain_connection_errors()

    async def shutdown_trigger() -> None:
        await lifecycle.draining.wait()
        # Sessions close themselves 1001 after the grace; this bounds the wait.
        limit = lifecycle.grace_deadline + settings.send_timeout_s + CLOSE_TIMEOUT_S
        with trio.move_on_at(limit):
            await lifecycle.wait_all_closed()

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)
        )
        task_status.started(binds[0])
        await shutdown_trigger()
        # Every session has closed (or the bound passed). Hypercorn would still
        # wait up to graceful_timeout for its per-WebSocket ping tasks to wake.
        nursery.cancel_scope.cancel()


async def _watch_signals(
    lifecycle: ServerLifecycle, grace_s: float, server: trio.Nursery, log: logging.Logger
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if lifecycle.draining.is_set():
                log.warning("%s again: stopping now without waiting for the grace period", name)
                server.cancel_scope.cancel()
                return
            log.info(
                "%s: draining %d connection(s), grace %.1f s",
                name,
                lifecycle.open_connections,
                grace_s,
            )
            lifecycle.begin_drain(grace_s)
