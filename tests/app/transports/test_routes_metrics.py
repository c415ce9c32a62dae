"""The shared HTTP answers: refusals counted by reason, and ``/metrics`` on both transports.

The end-to-end tests run a real server per transport, do what each metric counts
(turns, a cancel, a failing agent, refused handshakes, closes) and read it back from
``GET /metrics``, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from app import (
    AgentThinking,
    Emit,
    RunContext,
    ServerLifecycle,
    Services,
    Settings,
    build_services,
    mint_token,
)
from app.services._admission import AdmissionLimits, MemoryAdmission
from app.session._session import CLOSE_TIMEOUT_S
from app.session._transport import HandshakeInfo
from app.transports._handshake import Accept, Reject
from app.transports._routes import admit, decide, metrics_reply

if TYPE_CHECKING:
    from tests.app.conftest import E2E, LiveServer

SECRET = b"routes-test-secret-0123456789abcdefghij"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


# -- without a server ------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    return Settings(jwt_secret=SECRET, **overrides)


def info(token: str | None = None, **headers: str) -> HandshakeInfo:
    pairs = [(k.lower(), v) for k, v in headers.items()]
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    return HandshakeInfo(path="/ws", headers=tuple(pairs), subprotocols=(), query_string="")


async def test_admit_counts_full_and_draining() -> None:
    lifecycle = ServerLifecycle(max_connections=1)
    assert admit(lifecycle, 5) is None
    assert isinstance(admit(lifecycle, 5), Reject)
    lifecycle.begin_drain(0.0)
    assert isinstance(admit(lifecycle, 5), Reject)
    refused = lifecycle.metrics.refused_by_reason
    assert (refused["full"], refused["draining"]) == (1, 1)


async def decided(handshake: HandshakeInfo, services: Services, lifecycle: ServerLifecycle) -> bool:
    """Whether ``decide`` accepts ``handshake`` (the connection ends at once)."""
    async with decide(handshake, services, lifecycle) as decision:
        return isinstance(decision, Accept)


async def test_decide_counts_each_refusal_by_reason() -> None:
    services = build_services(settings(allowed_origins=("https://ok.example",)))
    # One connection per user, ever (almost); a flood closes for 10 s; one open at once.
    now = [0.0]
    limits = AdmissionLimits(connect_rate_per_s=1e-9, abuse_cooldown_s=10.0, max_open=1)
    admission = MemoryAdmission(limits, clock=lambda: now[0])
    lifecycle = ServerLifecycle(max_connections=10, admission=admission)
    token = mint_token(secret=SECRET, algorithm="HS256", subject="ann", ttl_s=60, now=time.time())
    async with decide(info(token), services, lifecycle) as first:
        assert isinstance(first, Accept)
        assert not await decided(info(token), services, lifecycle)  # ann's one connection
    cases = {
        "origin": info(token, origin="https://evil.example"),
        "token": info("not-a-token"),
        "rate": info(token),  # the user's second connection in the same instant
    }
    for reason, handshake in cases.items():
        assert not await decided(handshake, services, lifecycle), reason
        assert lifecycle.metrics.refused_by_reason[reason] == 1, reason
    wrong = attrs.evolve(info(token), subprotocols=("other.v9",))
    assert not await decided(wrong, services, lifecycle)
    admission.penalize("ann")
    now[0] = 1.0
    assert not await decided(info(token), services, lifecycle)
    refused = lifecycle.metrics.refused_by_reason
    assert (refused["subprotocol"], refused["cooldown"], refused["user_connections"]) == (1, 1, 1)
    assert sum(refused.values()) == 6


def test_metrics_reply_is_the_prometheus_text_format() -> None:
    lifecycle = ServerLifecycle(max_connections=1)
    lifecycle.metrics.runs_started = 3
    reply = metrics_reply(lifecycle)
    assert reply.status == 200
    assert dict(reply.headers)["content-type"].startswith("text/plain; version=")
    assert value(parse(reply.body.decode()), "enclave_runs_started_total") == 3


# -- end to end, on both transports ----------------------------------------------------


@pytest.fixture(params=["asgi", "lean"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@attrs.frozen
class ScriptedAgent:
    """Does what the message says: ``fail`` raises, ``wait`` waits, anything else completes."""

    name: str = "scripted"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        await emit(AgentThinking(thought="reading"))
        if run.text == "fail":
            raise RuntimeError("the agent broke")
        if run.text == "wait":
            await run.sleep(30)
        return {"text": run.text}


async def scrape(live: LiveServer) -> Samples:
    response = await live.get("/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.body.decode())


async def wait_closed(live: LiveServer, count: int) -> Samples:
    """Scrape until ``count`` connection ends were counted (they are counted as they end)."""
    with trio.fail_after(5):
        while True:
            samples = await scrape(live)
            ended = sum(
                v for (name, _), v in samples.items() if name == "enclave_connections_closed_total"
            )
            if ended >= count:
                return samples
            await trio.sleep(0.02)


async def test_metrics_count_turns_cancels_failures_refusals_and_closes(e2e: E2E) -> None:
    settings = e2e.settings(allowed_origins=("https://ok.example",))
    services = attrs.evolve(build_services(settings), agent=ScriptedAgent())
    async with e2e.server(settings, services=services) as live:
        before = await scrape(live)
        assert value(before, "enclave_connections_open") == 0
        assert value(before, "enclave_runs_started_total") == 0
        assert value(before, "enclave_isolation_violations_total") == 0
        token = e2e.token()
        async with live.chat(token) as chat:
            done = await chat.run_to_end("hello")
            assert done[-1]["type"] == "agent_completed"
            failed = await chat.run_to_end("fail")
            assert failed[-1]["type"] == "agent_error"
            started = await chat.start("wait")
            await chat.send({"type": "cancel", "run_id": started["run_id"]})
            cancelled = await chat.run_until_terminal(started["run_id"])
            assert cancelled[-1]["type"] == "run_cancelled"
            await chat.roundtrip()
            during = await scrape(live)
        assert value(during, "enclave_connections_open") == 1
        assert value(during, "enclave_runs_started_total") == 3
        assert value(during, "enclave_runs_completed_total") == 1
        assert value(during, "enclave_runs_failed_total", code="agent_failed") == 1
        assert value(during, "enclave_runs_failed_total", code="run_timeout") == 0
        assert value(during, "enclave_runs_cancelled_total", reason="cancelled_by_client") == 1
        assert value(during, "enclave_turn_seconds_count") == 3
        turns_s = value(during, "enclave_turn_seconds_sum")
        assert 0 < turns_s < 5
        assert value(during, "enclave_turn_seconds_bucket", le="+Inf") == 3
        # In: 3 user_message, a cancel, a ping. Out: connection_ready, 3 events per run, pong.
        assert value(during, "enclave_frames_total", direction="in") == 5
        assert value(during, "enclave_frames_total", direction="out") == 1 + 3 + 3 + 3 + 1
        assert value(during, "enclave_bytes_total", direction="in") > 100
        assert value(during, "enclave_bytes_total", direction="out") > 500

        origin = [("origin", "https://no.example")]
        assert (await live.reject(e2e.token(), headers=origin)).status == 403
        assert (await live.reject("eyJhbGciOiJub25lIn0.e30.")).status == 401
        assert (await live.reject(e2e.token(), subprotocols=["other.v9"])).status == 400
        after = await wait_closed(live, 1)
        assert value(after, "enclave_connections_open") == 0
        assert value(after, "enclave_connections_closed_total", code="peer") == 1
        for reason in ("origin", "token", "subprotocol"):
            assert value(after, "enclave_handshakes_refused_total", reason=reason) == 1, reason
        assert value(after, "enclave_handshakes_refused_total", reason="full") == 0
        assert value(after, "enclave_isolation_violations_total") == 0
        assert value(after, "enclave_slow_consumer_closes_total") == 0
        assert ("enclave_event_loop_lag_seconds_count", ()) in after
        assert ("enclave_store_seconds_count", (("op", "append"),)) not in after
        # Never a user, a token or an id in a label.
        ready = chat.ready
        secrets = {token, ready["user_id"], ready["connection_id"]}
        secrets |= {f[key] for f in chat.frames for key in ("run_id", "thread_id") if key in f}
        labels = {v for (_, pairs), _ in after.items() for _, v in pairs}
        assert not labels & secrets
        text = (await live.get("/metrics")).body.decode()
        assert not any(secret in text for secret in secrets)


async def test_metrics_count_rate_limit_closes_full_and_cooldown(e2e: E2E) -> None:
    settings = e2e.settings(
        rate_per_s=0.1, rate_burst=1, rate_abuse_limit=2, abuse_cooldown_s=30.0, max_connections=1
    )
    async with e2e.server(settings) as live:
        async with live.chat() as chat:
            assert (await live.reject(e2e.token("bob"))).status == 503
            for _ in range(3):
                await chat.send({"type": "ping"})
            assert await chat.closed() == (1008, "rate_limited")
        await live.wait_connections(0)
        assert (await live.reject(e2e.token())).status == 429
        samples = await wait_closed(live, 1)
    assert value(samples, "enclave_connections_closed_total", code="1008") == 1
    assert value(samples, "enclave_rate_limit_closes_total") == 1
    assert value(samples, "enclave_handshakes_refused_total", reason="full") == 1
    assert value(samples, "enclave_handshakes_refused_total", reason="cooldown") == 1


@attrs.frozen
class FloodAgent:
    """Emits far more than the kernel buffers hold, so a peer that does not read stalls."""

    name: str = "flood"

    async def run(self, run: RunContext, emit: Emit) -> Any:
        for _ in range(300):
            await emit(AgentThinking(thought="y" * 32_000))
        return None


@pytest.mark.parametrize("transport", ["lean"])  # ASGI cannot (docs/operations.md)
async def test_metrics_count_slow_consumer_closes(e2e: E2E) -> None:
    settings = e2e.settings(send_timeout_s=0.5)
    services = attrs.evolve(build_services(settings), agent=FloodAgent())
    async with (
        e2e.server(settings, services=services) as live,
        live.raw(e2e.token(), rcvbuf=4096) as client,
    ):
        await client.send_text('{"type": "user_message", "text": "flood me"}')
        with trio.fail_after(settings.send_timeout_s + CLOSE_TIMEOUT_S + 1):
            await live.wait_connections(0)
        samples = await wait_closed(live, 1)
    assert value(samples, "enclave_slow_consumer_closes_total") == 1
    assert value(samples, "enclave_connections_closed_total", code="1008") == 1
    assert value(samples, "enclave_bytes_total", direction="out") > 4096
