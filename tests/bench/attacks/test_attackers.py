"""Every attacker against a real lean server with short timeouts, all at once.

Counts and close codes are asserted, never timings.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from bench.attacks._attackers import ATTACKS, AttackConfig, AttackStats, attack
from bench.attacks._report import expectation
from bench.harness._servers import SERVERS, ServerOptions, start_server
from bench.harness._spawn import ProcessSet

TIMEOUT_S = 0.5
CONNECTIONS = {"flood": 2, "slowloris": 10, "oversized": 2, "slow_reader": 2, "churn": 4}


async def _all(port: int, secret: str) -> dict[str, AttackStats]:
    now = time.monotonic()
    configs = [
        AttackConfig(
            host="127.0.0.1",
            port=port,
            secret=secret,
            kind=kind,
            start_at=now,
            end_at=now + 4.0,
            connections=CONNECTIONS[kind],
            rate=40.0,
            trickle_s=0.2,
        )
        for kind in ATTACKS
    ]
    stats = await asyncio.gather(*(attack(c) for c in configs))
    return dict(zip(ATTACKS, stats, strict=True))


def test_the_server_answers_each_attack_as_documented(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    flags = (
        *("--rate-per-s", "20", "--rate-burst", "40"),
        *("--open-timeout-s", f"{TIMEOUT_S}", "--send-timeout-s", f"{TIMEOUT_S}"),
        *("--connect-rate-per-s", "1", "--connect-burst", "2", "--abuse-cooldown-s", "10"),
    )
    with ProcessSet() as procs:
        server = start_server(
            procs,
            SERVERS["enclave-lean"],
            ServerOptions(secret=secret, agent_delay_ms=2.0, extra_enclave_flags=flags),
            cores=None,
            log_path=tmp_path / "server.log",
        )
        results = asyncio.run(_all(server.port, secret))
        assert server.alive()
    for kind, stats in results.items():
        seen = stats.as_dict()
        status, detail = expectation(
            kind, seen, transport="lean", open_timeout_s=TIMEOUT_S, send_timeout_s=TIMEOUT_S
        )
        assert status == "ok", (kind, detail, seen)
    assert results["flood"].close_codes["1008"] >= 1
    assert results["flood"].errors["rate_limited"] >= 1
    assert results["oversized"].close_codes["1009"] >= 1
    assert results["slowloris"].ready == 0
    assert results["slowloris"].server_closed >= CONNECTIONS["slowloris"]
    assert results["slow_reader"].server_closed >= 1
    assert results["churn"].ready >= CONNECTIONS["churn"]
    assert results["churn"].server_closed == 0
    # Each attacker user's connect budget (2 at once, then 1/s) and the flood cool-down
    # shed the rest before the upgrade; a refusal is an answer, not a failure.
    assert results["churn"].refused["429"] >= 1
    assert results["flood"].refused["429"] >= 1
    assert set(results["churn"].failures) <= {"cut_at_end"}
