"""Scope-aware checks: ISO102 global, ISO104/ISO105 memoisation, ISO106, ISO108, ISO109."""

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


# -- ISO102 global ------------------------------------------------------------------


def test_global_counter_is_reported() -> None:
    source = """
    request_count = 0

    def count_request() -> int:
        global request_count
        request_count += 1
        return request_count
    """
    assert findings(source) == [("ISO102", 5)]


def test_global_in_method_and_nested_function_is_reported() -> None:
    source = """
    class Server:
        def start(self):
            def inner():
                global STATE
                STATE = 1
    """
    assert findings(source) == [("ISO102", 5)]


def test_nonlocal_is_not_reported() -> None:
    source = """
    def outer():
        count = 0
        def bump():
            nonlocal count
            count += 1
        return bump
    """
    assert findings(source) == []


# -- ISO104/ISO105 memoisation -------------------------------------------------------


def test_lru_cache_on_load_profile_is_reported() -> None:
    source = """
    from functools import lru_cache

    @lru_cache(maxsize=1024)
    def load_profile(user_id: str) -> dict[str, str]:
        return {"id": user_id}
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line) == ("ISO104", 4)
    assert "load_profile(user_id)" in finding.message
    assert "memoises across users" in finding.message


def test_cache_on_methods_and_async_functions_is_reported() -> None:
    source = """
    import functools

    class Repo:
        @functools.cache
        def lookup(self, key):
            return key

        @staticmethod
        @functools.lru_cache
        def parse(text):
            return text

    @functools.cache
    async def fetch(*args):
        return args
    """
    assert findings(source) == [("ISO104", 5), ("ISO104", 10), ("ISO104", 14)]


def test_cache_without_parameters_is_not_reported() -> None:
    source = """
    import functools

    @functools.cache
    def settings():
        return 1

    class Repo:
        @functools.lru_cache(maxsize=1)
        def size(self):
            return 1

        @classmethod
        @functools.cache
        def default(cls):
            return cls()

    def outer():
        @functools.cache
        def per_call(x):
            return x
        return per_call
    """
    assert findings(source) == []


def test_cached_property_on_non_frozen_class_is_reported() -> None:
    source = """
    from functools import cached_property

    class Connection:
        @cached_property
        def profile(self):
            return {}
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line) == ("ISO105", 5)
    assert "memoises" in finding.message


def test_cached_property_on_frozen_class_and_property_are_not_reported() -> None:
    source = """
    import functools
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Token:
        @functools.cached_property
        def claims(self):
            return ()

    class Connection:
        @property
        def profile(self):
            return {}
    """
    assert findings(source) == []


# -- ISO106 ContextVar ------------------------------------------------------------------


def test_contextvar_with_mutable_default_is_reported() -> None:
    source = """
    from contextvars import ContextVar

    ctx = ContextVar("ctx", default={})
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line, finding.col) == ("ISO106", 4, 33)


def test_contextvar_set_to_mutable_value_is_reported() -> None:
    source = """
    import contextvars

    current = contextvars.ContextVar("current")

    def enter(user_id):
        current.set({"user": user_id})
        current.set([])
    """
    assert findings(source) == [("ISO106", 7), ("ISO106", 8)]


def test_contextvar_set_through_attribute_or_parameter_is_reported() -> None:
    source = """
    from contextvars import ContextVar

    class Scope:
        def __init__(self):
            self._storage = ContextVar("storage")

        def reset(self):
            self._storage.set({})

    def enter(var: ContextVar[list[str]]):
        var.set([])
    """
    assert findings(source) == [("ISO106", 9), ("ISO106", 12)]


def test_set_on_other_objects_is_not_reported() -> None:
    source = """
    import dask

    def run(visitor):
        with dask.config.set({"scheduler": "sync"}):
            visitor.set([])
    """
    assert findings(source) == []


def test_contextvar_with_immutable_values_is_not_reported() -> None:
    source = """
    import contextvars
    import trio

    current = contextvars.ContextVar("current", default=None)
    names = contextvars.ContextVar("names", default=())

    def enter(user_id, ctx):
        current.set(ctx)
        names.set((user_id,))
        trio.Event().set()
    """
    assert findings(source) == []


# -- ISO108 spawn_system_task ------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import trio\ndef start(fn):\n    trio.lowlevel.spawn_system_task(fn)\n",
        "from trio.lowlevel import spawn_system_task\ndef start(fn):\n    spawn_system_task(fn)\n",
        "import trio.lowlevel as ll\ndef start(fn):\n    ll.spawn_system_task(fn, name='x')\n",
    ],
)
def test_spawn_system_task_is_reported(source: str) -> None:
    assert findings(source) == [("ISO108", 3)]


def test_tasks_in_the_connections_nursery_are_not_reported() -> None:
    source = """
    import trio

    async def serve_connection(ws):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.reader)
            await nursery.start(ws.writer)
    """
    assert findings(source) == []


# -- ISO109 nursery stored out of the connection's reach -----------------------------------


def test_nursery_stored_in_module_global_is_reported() -> None:
    source = """
    import trio

    _nursery = None

    async def main():
        global _nursery
        async with trio.open_nursery() as n:
            _nursery = n
            await trio.sleep_forever()
    """
    assert findings(source) == [("ISO102", 7), ("ISO109", 9)]


def test_nursery_stored_on_class_is_reported() -> None:
    source = """
    import trio
    from typing import ClassVar

    class TaskRunner:
        shared: ClassVar[trio.Nursery | None] = None

        @classmethod
        async def install(cls, nursery: trio.Nursery) -> None:
            cls.nursery = nursery

    async def setup(n: trio.Nursery) -> None:
        TaskRunner.nursery = n
        type(TaskRunner()).spawn = n.start_soon
    """
    assert only(source, "ISO109") == [6, 10, 13, 14]


def test_nursery_owned_by_the_connection_object_is_not_reported() -> None:
    source = """
    import trio

    class Connection:
        def __init__(self, nursery: trio.Nursery) -> None:
            self.nursery = nursery

        async def run(self) -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                helper = Helper()
                helper.nursery = nursery

    class Helper:
        nursery: trio.Nursery
    """
    assert findings(source) == []
