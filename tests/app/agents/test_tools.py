import sys
import time
import types
from typing import Any

import pytest

from app.agents import CLOCK, WORD_COUNT, Tool, ToolError, ToolRegistry, load_tools
from app.agents._tools import BUILTIN, parse_arguments

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "x": {"type": ["number", "null"]},
    },
    "required": ["n"],
    "additionalProperties": False,
}


def echo(**kwargs: Any) -> Any:
    return kwargs


REGISTRY = ToolRegistry((WORD_COUNT, CLOCK, Tool("echo", "Echo.", SCHEMA, echo)))


def test_tool_names_are_checked() -> None:
    with pytest.raises(ValueError, match="tool name"):
        Tool("has space", "", {}, echo)
    with pytest.raises(ValueError, match="duplicate tool names: echo"):
        ToolRegistry((Tool("echo", "", {}, echo), Tool("echo", "", {}, echo)))


def test_specs_and_lookup() -> None:
    assert REGISTRY.specs()[0] == {
        "type": "function",
        "function": {
            "name": "word_count",
            "description": WORD_COUNT.description,
            "parameters": WORD_COUNT.parameters,
        },
    }
    assert REGISTRY.get("clock") is CLOCK
    assert REGISTRY.get("nope") is None
    assert ToolRegistry().specs() == []


async def test_builtin_tools() -> None:
    outcome = await REGISTRY.call("word_count", '{"text": "a b  c"}')
    assert (outcome.ok, outcome.tool_input, outcome.result) == (
        True,
        {"text": "a b  c"},
        {"words": 3},
    )
    clock = await REGISTRY.call("clock", "")
    assert clock.ok
    assert abs(clock.result["unix"] - time.time()) < 5
    assert time.strptime(clock.result["utc"], "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("nope", "{}", "unknown tool 'nope' (tools: word_count, clock, echo)"),
        ("echo", "{oops", "arguments are not valid JSON"),
        ("echo", "[1]", "arguments must be a JSON object"),
        ("echo", "{}", "missing argument 'n'"),
        ("echo", '{"n": "1"}', "argument 'n' must be of type integer"),
        ("echo", '{"n": true}', "argument 'n' must be of type integer"),
        ("echo", '{"n": 1, "mode": "c"}', 'argument \'mode\' must be one of ["a", "b"]'),
        ("echo", '{"n": 1, "x": "y"}', "argument 'x' must be of type number or null"),
        ("echo", '{"n": 1, "zz": 0}', "unexpected argument 'zz'"),
    ],
)
async def test_bad_calls_are_results(name: str, arguments: str, error: str) -> None:
    outcome = await REGISTRY.call(name, arguments)
    assert not outcome.ok
    assert outcome.result["error"].startswith(error)


async def test_good_arguments_pass() -> None:
    outcome = await REGISTRY.call("echo", '{"n": 1, "mode": "a", "x": null}')
    assert outcome.result == {"n": 1, "mode": "a", "x": None}
    open_schema = ToolRegistry((Tool("any", "", {"type": "object"}, echo),))
    assert (await open_schema.call("any", '{"k": [1]}')).result == {"k": [1]}


async def test_failing_tools_are_results() -> None:
    def refuses() -> None:
        raise ToolError("no such city")

    def crashes() -> None:
        raise KeyError("internal detail")

    async def not_json() -> object:
        return object()

    registry = ToolRegistry(
        (
            Tool("refuses", "", {}, refuses),
            Tool("crashes", "", {}, crashes),
            Tool("not_json", "", {}, not_json),
        )
    )
    assert (await registry.call("refuses", "")).result == {"error": "no such city"}
    assert (await registry.call("crashes", "")).result == {"error": "crashes failed (KeyError)"}
    assert (await registry.call("not_json", "")).result == {
        "error": "not_json returned a value that is not JSON"
    }


def test_parse_arguments() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("  ") == {}
    assert parse_arguments("{bad") == "{bad"


def test_load_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = Tool("mine", "", {}, echo)
    module = types.ModuleType("enclave_test_tools")
    module.mine = mine  # type: ignore[attr-defined]
    module.several = lambda: [Tool("a", "", {}, echo), Tool("b", "", {}, echo)]  # type: ignore[attr-defined]
    module.wrong = lambda: ["not a tool"]  # type: ignore[attr-defined]
    module.value = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "enclave_test_tools", module)
    assert load_tools(["builtin"]).tools == BUILTIN
    assert load_tools([]).tools == ()
    loaded = load_tools(["enclave_test_tools:mine", "enclave_test_tools:several"])
    assert [t.name for t in loaded.tools] == ["mine", "a", "b"]
    for spec, message in [
        ("nope", "expected 'builtin' or 'module:attr'"),
        ("enclave_test_tools:missing", "has no attribute"),
        ("no_such_module_xyz:t", "No module named"),
        ("enclave_test_tools:wrong", "not a Tool"),
        ("enclave_test_tools:value", "not a Tool"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_tools([spec])
    with pytest.raises(ValueError, match="duplicate"):
        load_tools(["builtin", "builtin"])
