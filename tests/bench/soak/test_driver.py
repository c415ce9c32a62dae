"""The soak's clients against a real lean server: cancels, drops, one terminal per turn.

Counts are asserted, never timings.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from bench.harness._servers import SERVERS, ServerOptions, start_server
from bench.harness._spawn import ProcessSet
from bench.soak._driver import SoakConfig, SoakDriver


async def _drive(config: SoakConfig) -> dict[str, Any]:
    return await SoakDriver(config).run(progress=False)


def test_turns_cancels_and_drops_each_end_once(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    with ProcessSet() as procs:
        server = start_server(
            procs,
            SERVERS["enclave-lean"],
            ServerOptions(secret=secret, agent_delay_ms=5.0),
            cores=None,
            log_path=tmp_path / "server.log",
        )
        config = SoakConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret,
            slots=4,
            duration_s=1.5,
            turns_per_connection=3,
            cancel_p=0.3,
            drop_p=0.2,
        )
        result = asyncio.run(_drive(config))
        assert server.alive()
    counts = result["counts"]
    assert counts["turns_sent"] > 0
    assert counts["turns_sent"] == counts["turns_done"] + counts["turns_dropped"]
    assert counts["cancels_sent"] > 0
    assert counts["terminal:run_cancelled"] > 0
    assert counts["turns_dropped"] > 0
    assert counts["cycles"] > config.slots
    bad = {
        k: v
        for k, v in counts.items()
        if k.startswith(("unexpected_close", "connect_failed", "slot_", "error:"))
        or k in ("turns_lost", "turn_timeout", "extra_terminal", "stray_started")
    }
    assert bad == {}
    assert result["violations"] == 0
    assert result["violation_samples"] == []
