"""chat.v1 peer: the lean transport running a bare handler, with no session.

The same Trio sockets and the same WebSocket layer as ``enclave serve --transport
lean`` (:class:`app.transports.lean.LeanTransport`, websockets' sans-I/O protocol), the
same token check, but after the upgrade only a minimal handler: a per-connection nursery
(one task per run, as the full server has), ``json.loads`` and the echo agent. No
session, user context, validation, limits, keepalive or emitter queue. Against the
full server on the lean transport this is what the session costs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import sys
from collections.abc import Sequence

import trio

from app.session._transport import TransportClosed, UnsupportedFrame
from app.transports.lean import LeanTransport, ReadPoller

from ._chat import (
    PeerArgs,
    PeerAuth,
    Rejected,
    Run,
    connection_ready,
    handle_text,
    parse_args,
    run_steps,
)

__all__ = ["main", "serve_peer"]

MAX_HEAD_BYTES = 16_384
MAX_MESSAGE_BYTES = 65_536
CLOSE_WAIT_S = 5.0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _send(transport: LeanTransport, text: str) -> None:
    await transport.send((text.encode(),), math.inf)


async def _run(transport: LeanTransport, run: Run, delay_s: float) -> None:
    frames = run_steps(run)
    try:
        await _send(transport, frames[0])
        for frame in frames[1:]:
            if delay_s > 0:
                await trio.sleep(delay_s)
            await _send(transport, frame)
    except TransportClosed:
        pass


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes] | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            return None
        data = await stream.receive_some(MAX_HEAD_BYTES)
        if not data:
            return None
        buffer += data
    head, rest = buffer.split(b"\r\n\r\n", 1)
    return head, rest


def _http(status: int, reason: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"content-length: {len(body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


async def _answer(stream: trio.SocketStream, data: bytes) -> None:
    await stream.send_all(data)
    await stream.send_eof()


async def _serve_connection(
    stream: trio.SocketStream,
    auth: PeerAuth,
    delay_s: float,
    log: logging.Logger,
    poller: ReadPoller,
) -> None:
    opened = await _read_head(stream)
    if opened is None:
        return
    head, rest = opened
    request_line, *lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    target = parts[1] if len(parts) == 3 else "/"
    path, _, query = target.partition("?")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    if path == "/health":
        await _answer(
            stream, _http(200, "OK", b'{"status":"ok"}', [("content-type", "application/json")])
        )
        return
    keys = [v for k, v in headers if k == "sec-websocket-key"]
    if path != "/ws" or len(keys) != 1:
        await _answer(stream, _http(400, "Bad Request", b'{"error":"invalid_request"}'))
        return
    offered = [p.strip() for k, v in headers if k == "sec-websocket-protocol" for p in v.split(",")]
    decision = auth.check(headers, [p for p in offered if p], query)
    if isinstance(decision, Rejected):
        await _answer(stream, _http(decision.status, "Refused", decision.body, decision.headers))
        return
    accept = base64.b64encode(hashlib.sha1(keys[0].encode() + _GUID).digest()).decode()
    upgrade = [
        "HTTP/1.1 101 Switching Protocols",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-accept: {accept}",
    ]
    if decision.subprotocol:
        upgrade.append(f"sec-websocket-protocol: {decision.subprotocol}")
    await stream.send_all(("\r\n".join(upgrade) + "\r\n\r\n").encode())
    transport = LeanTransport(
        stream, max_message_bytes=MAX_MESSAGE_BYTES, logger=log, initial=rest, poller=poller
    )
    try:
        async with trio.open_nursery() as nursery:
            try:
                await _send(transport, connection_ready(decision.user_id))
                while True:
                    reply = handle_text(await transport.receive())
                    if reply.frame is not None:
                        await _send(transport, reply.frame)
                    elif reply.run is not None:
                        nursery.start_soon(_run, transport, reply.run, delay_s)
            except UnsupportedFrame:
                await transport.close(1003, "binary_not_supported")
            except TransportClosed:
                pass
            nursery.cancel_scope.cancel()
    finally:
        await transport.finish(CLOSE_WAIT_S)


async def serve_peer(
    args: PeerArgs, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    auth = PeerAuth.from_secret(args.secret)
    log = logging.getLogger("bench.peers.bare_trio")
    log.setLevel(logging.WARNING)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, auth, args.agent_delay_s, log, poller)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed):
            pass
        except Exception:  # one connection's bug must not stop the server
            log.exception("connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(args.port, host=args.host, backlog=2048)
    poller = ReadPoller()  # the lean server's reads too: the same transport
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(handler, listeners)
    finally:
        poller.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("bench.peers.bare_trio", argv)
    print(
        f"bare trio peer on {args.host}:{args.port} (lean transport)", file=sys.stderr, flush=True
    )
    try:
        trio.run(serve_peer, args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
