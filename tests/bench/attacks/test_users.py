"""The well-behaved users of the attacks: every turn stamped on the shared clock."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from bench.attacks._users import TimedLoadGenerator
from bench.harness._servers import SERVERS, ServerOptions, start_server
from bench.harness._spawn import ProcessSet
from bench.load._generator import LoadConfig


async def _turns(config: LoadConfig) -> TimedLoadGenerator:
    gen = TimedLoadGenerator(config)
    try:
        await gen.connect_all()
        await gen.run_window()
    finally:
        await gen.close_all()
    return gen


def test_every_turn_is_stamped_with_its_send_time(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    with ProcessSet() as procs:
        server = start_server(
            procs,
            SERVERS["enclave-lean"],
            ServerOptions(secret=secret),
            cores=None,
            log_path=tmp_path / "server.log",
        )
        config = LoadConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            users=3,
            think_s=0.0,
            duration_s=10.0,
            max_turns=2,
            connect_timeout_s=5.0,
            drain_timeout_s=5.0,
        )
        before = time.monotonic()
        gen = asyncio.run(_turns(config))
        after = time.monotonic()
    assert len(gen.timed) == 6
    assert all(before <= sent <= after and ms >= 0 for sent, ms in gen.timed)
    assert gen.failed == []
    assert gen.lost_at == []
    assert gen.result().violations == 0
