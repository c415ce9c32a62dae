import sys
import types
from typing import Any

import pytest
import trio
import trio.testing

from app import AgentOptions, EchoAgent, RunContext, load_agent
from app.agents._agent import AgentLoadError
from app.core._events import AgentThinking, ToolCompleted, ToolExecuting
from app.services import Timer


async def collect(agent: Any, text: str) -> tuple[list[object], Any]:
    seen: list[object] = []

    async def emit(payload: object) -> None:
        seen.append(payload)

    result = await agent.run(RunContext("run_1", "thr_1", "alice", text), emit)
    return seen, result


async def test_echo_counts_words() -> None:
    seen, result = await collect(EchoAgent(), "  one two\tthree\n")
    assert result == {"text": "  one two\tthree\n", "words": 3}
    assert [type(p) for p in seen] == [AgentThinking, ToolExecuting, ToolCompleted]
    assert seen[1] == ToolExecuting("word_count", {"text": "  one two\tthree\n"})
    assert seen[2] == ToolCompleted("word_count", {"words": 3})


async def test_echo_delay_per_step(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await collect(EchoAgent(delay_s=0.25), "x")
    assert trio.current_time() - start == pytest.approx(1.0)


def test_load_builtin_echo() -> None:
    agent = load_agent("echo", AgentOptions(delay_s=0.5))
    assert agent.name == "echo"
    assert agent == EchoAgent(delay_s=0.5)


def test_load_from_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("enclave_test_agents")

    def factory(options: AgentOptions) -> EchoAgent:
        return EchoAgent(delay_s=options.delay_s, name="custom")

    module.factory = factory  # type: ignore[attr-defined]
    module.broken = lambda options: object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "enclave_test_agents", module)
    assert load_agent("enclave_test_agents:factory", AgentOptions()).name == "custom"
    with pytest.raises(AgentLoadError, match="did not return an agent"):
        load_agent("enclave_test_agents:broken", AgentOptions())
    with pytest.raises(AgentLoadError, match="has no attribute"):
        load_agent("enclave_test_agents:missing", AgentOptions())


@pytest.mark.parametrize("spec", ["nope", "mod:", ":attr", "no_such_module_xyz:f"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(AgentLoadError, match="--agent"):
        load_agent(spec, AgentOptions())


async def test_run_context_sleep_is_the_timers_or_trio_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = Timer()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        run = RunContext("run_1", "thr_1", "alice", "hi", timer=timer)
        start = trio.current_time()
        nursery.start_soon(run.sleep, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert len(timer._deadlines) == 1  # it sleeps on the timer
        await run.sleep(2)
        assert trio.current_time() - start == pytest.approx(2)
        nursery.cancel_scope.cancel()
    start = trio.current_time()
    await RunContext("run_1", "thr_1", "alice", "hi").sleep(3)  # no timer: trio.sleep
    assert trio.current_time() - start == pytest.approx(3)
