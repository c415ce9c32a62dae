"""chat.v1 peer on the ``websockets`` asyncio server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ._chat import (
    Accepted,
    PeerArgs,
    PeerAuth,
    Run,
    connection_ready,
    handle_text,
    loop_factory,
    parse_args,
    run_steps,
)

__all__ = ["main"]


async def _run(ws: ServerConnection, run: Run, delay_s: float) -> None:
    frames = run_steps(run)
    await ws.send(frames[0])
    for frame in frames[1:]:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await ws.send(frame)


async def serve_peer(args: PeerArgs) -> None:
    auth = PeerAuth.from_secret(args.secret)
    users: dict[ServerConnection, Accepted] = {}

    def check(connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        if target.path == "/health":
            return connection.respond(HTTPStatus.OK, '{"status":"ok"}\n')
        offered = [
            p.strip()
            for v in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in v.split(",")
        ]
        decision = auth.check(request.headers.raw_items(), offered, target.query)
        if isinstance(decision, Accepted):
            users[connection] = decision
            return None
        headers = Headers([("Connection", "close"), ("Content-Length", str(len(decision.body)))])
        for name, value in decision.headers:
            headers[name] = value
        return Response(decision.status, HTTPStatus(decision.status).phrase, headers, decision.body)

    def select(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return Subprotocol("chat.v1") if "chat.v1" in offered else None

    async def handler(ws: ServerConnection) -> None:
        accepted = users.pop(ws)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await ws.send(connection_ready(accepted.user_id))
            async for message in ws:
                if not isinstance(message, str):
                    await ws.close(1003, "binary_not_supported")
                    return
                reply = handle_text(message)
                if reply.frame is not None:
                    await ws.send(reply.frame)
                elif reply.run is not None:
                    task = asyncio.create_task(_run(ws, reply.run, args.agent_delay_s))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async with serve(
        handler,
        args.host,
        args.port,
        process_request=check,
        select_subprotocol=select,
        ping_interval=20,
        backlog=2048,
    ) as server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("bench.peers.websockets_asyncio", argv)
    name, factory = loop_factory(args.loop)
    print(f"websockets peer on {args.host}:{args.port} ({name} loop)", file=sys.stderr, flush=True)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve_peer(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
