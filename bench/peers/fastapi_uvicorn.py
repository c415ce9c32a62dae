"""chat.v1 peer on FastAPI + uvicorn: the stack of the backend trio-enclave replaces.

uvicorn picks its fastest installed pieces, as a production deployment with
``uvicorn[standard]`` does: uvloop and httptools when importable, and its
``websockets`` sans-I/O WebSocket protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from ._chat import (
    PeerArgs,
    PeerAuth,
    Rejected,
    Run,
    connection_ready,
    handle_text,
    loop_factory,
    parse_args,
    run_steps,
)

__all__ = ["create_app", "main"]


async def _run(ws: WebSocket, run: Run, delay_s: float) -> None:
    frames = run_steps(run)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(frames[0])
        for frame in frames[1:]:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await ws.send_text(frame)


def create_app(args: PeerArgs) -> FastAPI:
    auth = PeerAuth.from_secret(args.secret)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.websocket("/ws")
    async def chat(websocket: WebSocket) -> None:
        offered = [str(p) for p in websocket.scope.get("subprotocols", [])]
        decision = auth.check(websocket.headers.items(), offered, websocket.url.query)
        if isinstance(decision, Rejected):
            await websocket.send_denial_response(
                Response(decision.body, status_code=decision.status, headers=dict(decision.headers))
            )
            return
        await websocket.accept(subprotocol=decision.subprotocol)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await websocket.send_text(connection_ready(decision.user_id))
            while True:
                text = await websocket.receive_text()
                reply = handle_text(text)
                if reply.frame is not None:
                    await websocket.send_text(reply.frame)
                elif reply.run is not None:
                    task = asyncio.create_task(_run(websocket, reply.run, args.agent_delay_s))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (WebSocketDisconnect, KeyError):
            # KeyError: a binary frame has no "text" (Starlette's receive_text).
            pass
        finally:
            for task in tasks:
                task.cancel()

    return app


def implementation(loop: str) -> dict[str, str]:
    """The uvicorn pieces in use."""
    loop_name, _ = loop_factory(loop)
    try:
        import httptools  # noqa: F401
    except ImportError:
        http = "h11"
    else:
        http = "httptools"
    return {"loop": loop_name, "http": http, "ws": "websockets-sansio"}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("bench.peers.fastapi_uvicorn", argv)
    impl = implementation(args.loop)
    config = uvicorn.Config(
        create_app(args),
        host=args.host,
        port=args.port,
        loop=impl["loop"],
        http=impl["http"],
        ws=impl["ws"],
        ws_ping_interval=20.0,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )
    shown = ", ".join(f"{k}={v}" for k, v in impl.items())
    print(f"fastapi+uvicorn peer on {args.host}:{args.port} ({shown})", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
