"""chat.v1 peer on aiohttp's web server."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

from aiohttp import WSMsgType, web

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


async def _run(ws: web.WebSocketResponse, run: Run, delay_s: float) -> None:
    frames = run_steps(run)
    with contextlib.suppress(ConnectionError):
        await ws.send_str(frames[0])
        for frame in frames[1:]:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await ws.send_str(frame)


def create_app(args: PeerArgs) -> web.Application:
    auth = PeerAuth.from_secret(args.secret)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        offered = [
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in v.split(",")
        ]
        decision = auth.check(request.headers.items(), offered, request.query_string)
        if isinstance(decision, Rejected):
            return web.Response(
                status=decision.status, body=decision.body, headers=dict(decision.headers)
            )
        ws = web.WebSocketResponse(
            protocols=("chat.v1",) if decision.subprotocol else (), heartbeat=20.0
        )
        await ws.prepare(request)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await ws.send_str(connection_ready(decision.user_id))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.close(code=1003, message=b"binary_not_supported")
                    break
                reply = handle_text(msg.data)
                if reply.frame is not None:
                    await ws.send_str(reply.frame)
                elif reply.run is not None:
                    task = asyncio.create_task(_run(ws, reply.run, args.agent_delay_s))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionError:
            pass
        finally:
            for task in tasks:
                task.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ws", chat)
    return app


async def serve_peer(args: PeerArgs) -> None:
    runner = web.AppRunner(create_app(args), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, backlog=2048)
        await site.start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("bench.peers.aiohttp_server", argv)
    name, factory = loop_factory(args.loop)
    print(f"aiohttp peer on {args.host}:{args.port} ({name} loop)", file=sys.stderr, flush=True)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve_peer(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
