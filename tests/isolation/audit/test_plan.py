"""The audit's plan and tokens: same seed, same plan; tokens from a command or a secret."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import pytest

from isolation.audit._plan import AuditError, make_plans
from isolation.audit._run import run_audit

if TYPE_CHECKING:
    from tests.isolation.audit.conftest import AuditKit


async def test_the_same_seed_gives_the_same_plan_and_canaries(kit: AuditKit) -> None:
    cfg = kit.config("ws://127.0.0.1:1/ws", users=30)
    assert make_plans(cfg, 3) == make_plans(cfg, 3)
    assert make_plans(cfg, 3) != make_plans(cfg, 4)
    plans = make_plans(cfg, 3)
    texts = [run.text for plan in plans for run in plan.runs]
    assert len(set(texts)) == len(texts)
    assert any(plan.colliding for plan in plans)
    assert all(plan.canary in run.text for plan in plans for run in plan.runs)


async def test_tokens_from_a_command(kit: AuditKit) -> None:
    mint = (
        "from joserfc import jwt; from joserfc.jwk import OctKey; import sys, time; "
        f"print('banner'); print(jwt.encode({{'alg': 'HS256'}}, {{'sub': sys.argv[1], "
        f"'exp': int(time.time()) + 600}}, OctKey.import_key({kit.secret!r})))"
    )
    command = f"{sys.executable} -c {json.dumps(mint)} {{sub}}"
    async with kit.our_server(agent_delay_ms=1) as url:
        report = await run_audit(
            kit.config(url, users=3, runs=1, jwt_secret=None, token_command=command)
        )
        assert report.exit_code == 0, report.format_text()
        failing = kit.config(url, users=2, jwt_secret=None, token_command="false {sub}")
        with pytest.raises(AuditError, match="--token-command failed"):
            await run_audit(failing)


async def test_a_wrong_secret_is_a_clear_usage_error(kit: AuditKit) -> None:
    async with kit.our_server() as url:
        with pytest.raises(AuditError, match="HTTP 401"):
            await run_audit(kit.config(url, jwt_secret=b"w" * 40))
