"""Name resolution and value classification: what counts as a mutable value."""

from __future__ import annotations

import textwrap

import pytest

from isolation import check_source


def findings(source: str) -> list[tuple[str, int]]:
    """``(code, line)`` of every finding in a dedented snippet."""
    return [(f.code, f.line) for f in check_source(textwrap.dedent(source), "snippet.py")]


def only(source: str, code: str) -> list[int]:
    """Lines of the findings with ``code`` in a dedented snippet."""
    return [line for found, line in findings(source) if found == code]


@pytest.mark.parametrize(
    "value",
    [
        "{}",
        "[]",
        "{1, 2}",
        "bytearray()",
        "[u for u in range(3)]",
        "{u: 0 for u in range(3)}",
        "{u for u in range(3)}",
        "dict()",
        "list()",
        "set()",
        "dict.fromkeys('ab')",
        "collections.defaultdict(list)",
        "collections.deque(maxlen=10)",
        "collections.OrderedDict()",
        "collections.Counter()",
        "collections.ChainMap()",
        "weakref.WeakValueDictionary()",
        "weakref.WeakKeyDictionary()",
        "weakref.WeakSet()",
        "queue.Queue()",
        "([], 1)",
        "[0] * 8",
        "{} if DEBUG else {1: 2}",
    ],
)
def test_mutable_module_values_are_reported(value: str) -> None:
    source = f"import collections, queue, weakref\nDEBUG = False\nSTATE = {value}\n"
    assert findings(source) == [("ISO101", 3)]


def test_from_imports_and_aliases_are_resolved() -> None:
    source = """
    from collections import defaultdict as dd, deque
    import weakref as wr
    A = dd(list)
    B = deque()
    C = wr.WeakSet()
    """
    assert only(source, "ISO101") == [4, 5, 6]


def test_configured_mutable_constructor_is_reported() -> None:
    source = "from events import EventManager\nMANAGER = EventManager()\n"
    assert check_source(source) == []
    for name in ("EventManager", "events.EventManager"):
        result = check_source(source, mutable_constructors=[name])
        assert [(f.code, f.line) for f in result] == [("ISO101", 2)]
