"""The Quart-Trio (ASGI) transport: HTTP routes and the WebSocket endpoint.

Traps of this stack handled here: an exception after accept would make Quart
close with 1000 (the session closes 1011 itself); Quart turns an empty binary
message into ``None`` (treated as binary: 1003); Hypercorn sends no close frame
on shutdown (the session drains and closes 1001 first); Hypercorn never checks
pongs (``serve()`` sets a read timeout of ping interval + pong timeout).
"""

from __future__ import annotations

# werkzeug binds every request's host with the "idna" codec, which Python imports from
# disk on first use; a process out of file descriptors then failed that import and Quart
# answered 500 to each handshake. Importing it with the app keeps that path fd-free.
import encodings.idna  # noqa: F401

from quart import Response, request, websocket
from quart.wrappers import Websocket
from quart_trio import QuartTrio

from ...auth._context import UserContext
from ...services._services import ServerLifecycle, Services
from ...session._transport import HandshakeInfo
from ...web._dev_token import TokenMinter
from ...web._static import PAGE_FILES, load_static
from .._conformance import ECHO_PATH, log_startup_warning, serve_quart_echo
from .._handshake import Reject
from .._routes import (
    DEV_TOKEN_MAX_BODY,
    DEV_TOKEN_PATH,
    HttpReply,
    admit,
    decide,
    dev_token_reply,
    health_reply,
    metrics_reply,
    page_reply,
    ready_reply,
    rejection_reply,
    run_counted_session,
)
from ._connection import QuartTransport

__all__ = ["QuartTransport", "create_app"]


def _response(reply: HttpReply) -> Response:
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))


def handshake_info(ws: Websocket) -> HandshakeInfo:
    return HandshakeInfo(
        path=ws.path,
        headers=tuple((k.lower(), v) for k, v in ws.headers.items()),
        subprotocols=tuple(ws.requested_subprotocols),
        query_string=ws.query_string.decode("latin-1"),
        remote=ws.remote_addr,
    )


def create_app(services: Services, lifecycle: ServerLifecycle) -> QuartTrio:
    """The ASGI app. Builds no context, session or emitter; each connection builds its own."""
    settings = services.settings
    app = QuartTrio("trio_enclave")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = DEV_TOKEN_MAX_BODY  # the only body read: /dev/token's
    static = load_static(ws_path=settings.path, dev_tokens=settings.dev_tokens)

    @app.get("/health")
    async def health() -> Response:
        return _response(health_reply())

    @app.get("/ready")
    async def ready() -> Response:
        return _response(ready_reply(lifecycle))

    @app.get("/metrics")
    async def metrics() -> Response:
        return _response(metrics_reply(lifecycle))

    async def page() -> Response:
        reply = page_reply(static, request.path)
        assert reply is not None  # routed only for the page's paths
        return _response(reply)

    for path, name, _ in PAGE_FILES:
        app.add_url_rule(path, f"page:{name}", page, methods=["GET"])

    if settings.dev_tokens:  # otherwise the route does not exist: 404
        minter = TokenMinter.from_settings(settings)

        @app.post(DEV_TOKEN_PATH)
        async def dev_token() -> Response:
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            return _response(dev_token_reply(minter, body, services.wall_clock()))

    if (
        settings.conformance_echo
    ):  # testing only: no token, no session (app/transports/_conformance.py)
        log_startup_warning(settings, services.log)

        @app.websocket(ECHO_PATH)
        async def conformance_echo() -> Response | None:
            refused = admit(lifecycle, settings.retry_after_s)
            if refused is not None:
                return _response(rejection_reply(refused))
            try:
                ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
                await serve_quart_echo(ws, settings)
            finally:
                lifecycle.release()
            return None

    @app.websocket(settings.path)
    async def chat() -> Response | None:
        # The real object, not the context-local proxy: the session's tasks use it.
        ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
        # Admission first: a full or draining server spends nothing on crypto.
        refused = admit(lifecycle, settings.retry_after_s)
        if refused is not None:
            return _response(rejection_reply(refused))
        try:
            async with decide(handshake_info(ws), services, lifecycle) as decision:
                if isinstance(decision, Reject):
                    return _response(rejection_reply(decision))
                await ws.accept(subprotocol=decision.subprotocol)
                context = UserContext.from_claims(decision.claims, carrier=decision.carrier)
                transport = QuartTransport(ws, lifecycle.metrics.traffic)
                await run_counted_session(transport, context, services, lifecycle)
        finally:
            lifecycle.release()
        return None

    return app
