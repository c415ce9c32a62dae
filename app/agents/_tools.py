"""Tools a model may call: frozen :class:`Tool` values and the :class:`ToolRegistry` of one agent.

A registry is built once, by the agent's factory, from tool values (the built-in
``word_count`` and ``clock``, and the user's own, named ``module:attr``); nothing here
is process-wide. What a tool gets and returns is JSON; what goes wrong in a call (an
unknown tool, arguments that do not fit, a tool that raises) becomes an ``{"error": ...}``
result that the model reads, never an exception of the run.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from ..core._events import encode_json

__all__ = [
    "BUILTIN",
    "CLOCK",
    "WORD_COUNT",
    "Tool",
    "ToolError",
    "ToolOutcome",
    "ToolRegistry",
    "load_tools",
    "parse_arguments",
]

JSON = Any
#: What OpenAI-compatible servers accept as a function name.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


class ToolError(Exception):
    """Raised by a tool for a failure the model should read: its message is the result's
    ``error``. Any other exception becomes ``tool failed (ExceptionName)``."""


def _check_name(_: object, __: object, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(f"tool name {value!r}: expected 1-64 of A-Z a-z 0-9 _ -")


@attrs.frozen
class Tool:
    """A function the model may call.

    ``parameters`` is the JSON schema of its arguments (an ``object`` schema); the
    registry checks ``required``, ``additionalProperties: false`` and each property's
    ``type`` and ``enum`` before the call. ``function`` is called with the arguments as
    keywords and returns JSON; it may be a coroutine function. A plain function runs on
    the event loop: keep it quick, and make anything that waits async.
    """

    name: str = attrs.field(validator=_check_name)
    description: str
    parameters: Mapping[str, JSON]
    function: Callable[..., Any] = attrs.field(eq=False)

    def spec(self) -> dict[str, JSON]:
        """The entry of the request's ``tools`` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@attrs.frozen
class ToolOutcome:
    """One call's input (the parsed arguments, or their text if not JSON) and result."""

    tool_input: JSON
    result: JSON
    ok: bool


def parse_arguments(arguments: str) -> JSON:
    """The model's arguments as JSON, or their text when they are not JSON."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments


def _error(tool_input: JSON, message: str) -> ToolOutcome:
    return ToolOutcome(tool_input=tool_input, result={"error": message}, ok=False)


def _argument_problem(schema: Mapping[str, JSON], args: Mapping[str, JSON]) -> str | None:
    properties: Mapping[str, JSON] = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in args:
            return f"missing argument {name!r}"
    for name, value in args.items():
        prop = properties.get(name)
        if prop is None:
            if schema.get("additionalProperties") is False:
                return f"unexpected argument {name!r}"
            continue
        kinds = prop.get("type")
        if isinstance(kinds, str):
            kinds = [kinds]
        if kinds is not None:
            types = tuple(t for kind in kinds for t in _TYPES.get(kind, (object,)))
            # bool is an int in Python, not in JSON.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return f"argument {name!r} must be of type {' or '.join(kinds)}"
        if "enum" in prop and value not in prop["enum"]:
            return f"argument {name!r} must be one of {json.dumps(prop['enum'])}"
    return None


def _unique(_: object, __: object, tools: tuple[Tool, ...]) -> None:
    names = [tool.name for tool in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate tool names: {', '.join(duplicates)}")


@attrs.frozen
class ToolRegistry:
    """The tools of one agent, by name. Immutable: built once, shared by its runs."""

    tools: tuple[Tool, ...] = attrs.field(default=(), validator=_unique)

    def get(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None

    def specs(self) -> list[dict[str, JSON]]:
        """The request's ``tools`` list (empty: send no ``tools``)."""
        return [tool.spec() for tool in self.tools]

    async def call(self, name: str, arguments: str) -> ToolOutcome:
        """Run tool ``name`` with ``arguments`` (the model's JSON text).

        Never raises for the model's mistakes or the tool's failure: those are
        ``{"error": ...}`` results. Cancellation: an async tool is cancelled with the run.
        """
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return _error(arguments, f"arguments are not valid JSON: {exc}")
        tool = self.get(name)
        if tool is None:
            known = ", ".join(t.name for t in self.tools) or "none"
            return _error(args, f"unknown tool {name!r} (tools: {known})")
        if not isinstance(args, dict):
            return _error(args, "arguments must be a JSON object")
        problem = _argument_problem(tool.parameters, args)
        if problem is not None:
            return _error(args, problem)
        try:
            result = tool.function(**args)
            if inspect.isawaitable(result):
                result = await result
        except ToolError as exc:
            return _error(args, str(exc))
        except Exception as exc:  # the tool's bug: the model reads that it failed, no more
            return _error(args, f"{name} failed ({type(exc).__name__})")
        try:
            encode_json(result)
        except (TypeError, ValueError):
            return _error(args, f"{name} returned a value that is not JSON")
        return ToolOutcome(tool_input=args, result=result, ok=True)


def _word_count(text: str) -> dict[str, int]:
    return {"words": len(text.split())}


def _clock() -> dict[str, JSON]:
    now = time.time()
    return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "unix": round(now, 3)}


WORD_COUNT: Final = Tool(
    name="word_count",
    description="Count the words of a text (runs of characters between whitespace).",
    parameters={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "the text to count"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    function=_word_count,
)
CLOCK: Final = Tool(
    name="clock",
    description="The current date and time in UTC (ISO 8601) and as Unix seconds.",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
    function=_clock,
)
BUILTIN: Final = (WORD_COUNT, CLOCK)


def load_tools(specs: Iterable[str]) -> ToolRegistry:
    """The registry of ``specs``: ``builtin`` (word_count, clock) or ``module:attr``, where
    ``attr`` is a :class:`Tool` or a function of no arguments returning tools.

    Raises ValueError naming the spec that cannot be loaded.
    """
    tools: list[Tool] = []
    for spec in specs:
        if spec == "builtin":
            tools.extend(BUILTIN)
            continue
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"tool {spec!r}: expected 'builtin' or 'module:attr'")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"tool {spec!r}: {exc}") from None
        found = [value] if isinstance(value, Tool) else list(value()) if callable(value) else []
        if not found or not all(isinstance(tool, Tool) for tool in found):
            raise ValueError(f"tool {spec!r}: not a Tool nor a function returning tools")
        tools.extend(found)
    return ToolRegistry(tuple(tools))
