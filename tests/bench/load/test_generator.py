"""The load generator against one peer on an ephemeral port, a few users, a few turns each.

Counts are asserted, never timings.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from bench.harness._servers import SERVERS, ServerOptions, start_server
from bench.harness._spawn import ProcessSet
from bench.load._generator import LoadConfig, run_load
from bench.load._results import LoadResult


def _load_against_websockets_peer(
    tmp_path: Path, *, agent_delay_ms: float = 0.0, client_secret: str | None = None, **config: Any
) -> LoadResult:
    """Start the websockets peer, run the load generator against it with ``config``."""
    secret = secrets.token_hex(32)
    with ProcessSet() as procs:
        server = start_server(
            procs,
            SERVERS["websockets"],
            ServerOptions(secret=secret, agent_delay_ms=agent_delay_ms, start_timeout_s=15.0),
            cores=None,
            log_path=tmp_path / "server.log",
        )
        load = LoadConfig(
            host="127.0.0.1",
            port=server.port,
            secret=secret if client_secret is None else client_secret,
            **config,
        )
        return asyncio.run(run_load(load))


def test_five_users_three_turns_each_against_the_websockets_peer(tmp_path: Path) -> None:
    result = _load_against_websockets_peer(
        tmp_path,
        users=5,
        think_s=0.0,
        duration_s=10.0,
        max_turns=3,
        connect_timeout_s=5.0,
        ramp_timeout_s=10.0,
        drain_timeout_s=5.0,
    )
    assert result.connected == 5
    assert result.turns == 15
    assert len(result.turn_ms) == 15
    assert result.frames_rx == 15 * 5
    assert result.frames_tx == 15
    assert dict(result.errors) == {}
    assert result.violations == 0
    assert result.violation_samples == ()


def test_wrong_secret_is_refused_with_401(tmp_path: Path) -> None:
    result = _load_against_websockets_peer(
        tmp_path,
        client_secret=secrets.token_hex(32),
        users=2,
        duration_s=0.2,
        connect_timeout_s=5.0,
    )
    assert result.connected == 0
    assert dict(result.errors) == {"http_401": 2}


def test_a_turn_unanswered_through_the_whole_window_is_counted(tmp_path: Path) -> None:
    result = _load_against_websockets_peer(
        tmp_path,
        # Four 5 s steps a turn: every first turn, sent in the warm-up, outlasts the window.
        agent_delay_ms=5000,
        users=3,
        think_s=0.0,
        warmup_s=0.5,
        duration_s=1.0,
        connect_timeout_s=5.0,
        ramp_timeout_s=10.0,
        drain_timeout_s=0.2,
    )
    assert result.connected == 3
    assert result.errors["stalled_turn"] == 3
    assert result.turns == 0
