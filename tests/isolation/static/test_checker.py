"""The static isolation checker: each finding kind, its allowed look-alikes, pragmas."""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest

import isolation
from isolation import CODES, Finding, check_paths, check_source
from isolation.static._checker import python_files


def findings(source: str) -> list[tuple[str, int]]:
    """``(code, line)`` of every finding in a dedented snippet."""
    return [(f.code, f.line) for f in check_source(textwrap.dedent(source), "snippet.py")]


def only(source: str, code: str) -> list[int]:
    """Lines of the findings with ``code`` in a dedented snippet."""
    return [line for found, line in findings(source) if found == code]


# -- API ------------------------------------------------------------------------


def test_public_api_is_reexported() -> None:
    assert isolation.check_source is check_source
    assert isolation.check_paths is check_paths
    assert isolation.Finding is Finding
    assert isolation.CODES is CODES


def test_codes_are_an_immutable_mapping_of_stable_codes() -> None:
    assert set(CODES) == {"ISO000", "ISO001", *(f"ISO10{n}" for n in range(1, 10))}
    with pytest.raises(TypeError):
        CODES["ISO999"] = "nope"  # type: ignore[index]
    assert all(text and "\n" not in text for text in CODES.values())


def test_every_code_is_documented_in_the_module_docstring() -> None:
    from isolation.static import _checker

    assert _checker.__doc__ is not None
    for code in CODES:
        assert code in _checker.__doc__


def test_finding_is_frozen_and_formats_as_one_line() -> None:
    finding = Finding("a.py", 3, 1, "ISO102", "global x")
    assert finding.format() == "a.py:3:1 ISO102 global x"
    assert finding.as_dict() == {
        "path": "a.py",
        "line": 3,
        "col": 1,
        "code": "ISO102",
        "message": "global x",
    }
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        finding.line = 4  # type: ignore[misc]


def test_findings_carry_path_and_one_based_columns() -> None:
    result = check_source("def f():\n    global x\n", "pkg/mod.py")
    assert result == [Finding("pkg/mod.py", 2, 5, "ISO102", result[0].message)]


def test_columns_count_characters_not_bytes() -> None:
    result = check_source('s = "é"; d = {}\n')
    assert [(f.code, f.col) for f in result] == [("ISO101", 10)]


def test_findings_are_sorted_by_line() -> None:
    source = """
    def g():
        global b
    a = {}
    def f():
        global a
    """
    assert findings(source) == [("ISO102", 3), ("ISO101", 4), ("ISO102", 6)]


def test_clean_source_has_no_findings() -> None:
    assert check_source("") == []
    assert check_source("x = 1\n") == []


def test_syntax_error_is_iso000() -> None:
    [finding] = check_source("def broken(:\n    pass\n", "bad.py")
    assert (finding.path, finding.line, finding.code) == ("bad.py", 1, "ISO000")
    assert finding.message.startswith("syntax error")


def test_null_bytes_are_iso000() -> None:
    assert [f.code for f in check_source("x = 1\0\n")] == ["ISO000"]


def test_invalid_escape_warnings_in_checked_code_are_not_raised() -> None:
    # filterwarnings=error would turn the parser's SyntaxWarning into an exception.
    assert check_source('PATTERN = "\\d+"\n') == []


# -- ISO101 module-level mutable values ---------------------------------------------


def test_connection_registry_keyed_by_user_is_reported_with_its_mutation() -> None:
    source = """
    import trio

    connections = {}

    async def handle(user_id: str, ws: object) -> None:
        connections[user_id] = ws
        try:
            await trio.sleep_forever()
        finally:
            del connections[user_id]
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line, finding.col) == ("ISO101", 4, 1)
    assert "'connections'" in finding.message
    assert "mutated in handle() on line 7" in finding.message


def test_process_wide_manager_built_at_import_is_reported() -> None:
    source = """
    class EventManager:
        def __init__(self) -> None:
            self.listeners = {}

        def subscribe(self, user_id, callback):
            self.listeners[user_id] = callback

    MANAGER = EventManager()
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line) == ("ISO101", 9)
    assert "EventManager" in finding.message


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


def test_unpacking_and_nested_blocks_at_module_level_are_checked() -> None:
    source = """
    import trio
    try:
        import ujson
    except ImportError:
        FALLBACK = {}
    if True:
        A, B = [], ()
    send, receive = trio.open_memory_channel(0)
    for _name in ("x",):
        pass
    """
    assert only(source, "ISO101") == [6, 8, 9]


def test_unrecognised_value_mutated_at_runtime_is_reported() -> None:
    source = """
    from mylib import make_registry

    REGISTRY = make_registry()
    CACHE = make_registry()
    SEEN = make_registry()

    def remember(user_id, value):
        REGISTRY[user_id] = value
        CACHE.setdefault(user_id, []).append(value)
        import heapq
        heapq.heappush(SEEN, user_id)
    """
    lines = only(source, "ISO101")
    assert lines == [4, 5, 6]


def test_configured_mutable_constructor_is_reported() -> None:
    source = "from events import EventManager\nMANAGER = EventManager()\n"
    assert check_source(source) == []
    for name in ("EventManager", "events.EventManager"):
        result = check_source(source, mutable_constructors=[name])
        assert [(f.code, f.line) for f in result] == [("ISO101", 2)]


ALLOWED_MODULE_LEVEL = {
    "final_constant": "from typing import Final\nLIMIT: Final = 10\nNAME: Final[str] = 'x'\n",
    "tuple_frozenset": "A = (1, 2)\nB = frozenset({1, 2})\nC = ('a', ('b', 'c'))\n",
    "mapping_proxy": "import types\nM = types.MappingProxyType({'a': 1})\n",
    "scalars": "S = 'x'\nB = b'x'\nN = 1.5\nT = True\nNONE = None\n",
    "regex": "import re\nPATTERN = re.compile(r'[a-z]+')\n",
    "all_list": "__all__ = ['a', 'b']\n__all__ += ['c']\n",
    "all_tuple": "__all__ = ('a',)\n",
    "typevars": (
        "from typing import NewType, ParamSpec, TypeVar\n"
        "T = TypeVar('T')\nP = ParamSpec('P')\nUserId = NewType('UserId', str)\n"
    ),
    "typing_alias": "from typing import Any\nJSON = dict[str, Any]\nU = int | str\nX = Any\n",
    "logger": "import logging\nLOGGER = logging.getLogger(__name__)\n",
    "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    CACHE = {}\n",
    "frozen_attrs_instance": (
        "import attrs\n@attrs.frozen\nclass Limits:\n    n: int = 1\nDEFAULT = Limits()\n"
    ),
    "frozen_dataclass_instance": (
        "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass L:\n    n: int = 1\n"
        "DEFAULT = L()\n"
    ),
    "enum_member": (
        "import enum\nclass Color(enum.Enum):\n    RED = 1\nDEFAULT = Color.RED\nC2 = Color(1)\n"
    ),
    "namedtuple": (
        "from typing import NamedTuple\nclass P(NamedTuple):\n    x: int = 0\nORIGIN = P()\n"
    ),
    "final_read_only_mapping": (
        "from collections.abc import Mapping\nfrom typing import Final\n"
        "PARSERS: Final[Mapping[str, int]]\nPARSERS = {'a': 1}\n"
        "NAMES: Final[frozenset[str]] = frozenset({'a'})\n"
    ),
    "unknown_import_not_mutated": "from lib import Client\nCLIENT = Client()\n",
    "local_mutation_shadows": (
        "connections = ()\ndef f(connections):\n    connections.append(1)\n"
        "def g():\n    connections = []\n    connections.append(1)\n"
    ),
    "builtin_shadowed_by_import": "from mylib import dict\nX = dict()\n",
}


@pytest.mark.parametrize("source", ALLOWED_MODULE_LEVEL.values(), ids=ALLOWED_MODULE_LEVEL.keys())
def test_allowed_module_level_values_are_not_reported(source: str) -> None:
    assert check_source(source) == []


def test_module_level_model_instance_is_reported() -> None:
    source = """
    from pydantic import BaseModel

    class Profile(BaseModel):
        name: str = ""

    CURRENT = Profile()
    """
    assert findings(source) == [("ISO101", 7)]


def test_final_does_not_make_a_dict_immutable() -> None:
    source = "from typing import Final\nCACHE: Final[dict[str, int]] = {}\n"
    assert findings(source) == [("ISO101", 2)]


def test_final_read_only_mapping_that_is_mutated_is_reported() -> None:
    source = """
    from collections.abc import Mapping
    from typing import Final
    PARSERS: Final[Mapping[str, int]] = {}
    def register(name):
        PARSERS[name] = 1
    """
    [finding] = check_source(textwrap.dedent(source))
    assert (finding.code, finding.line) == ("ISO101", 4)
    assert "mutated in register() on line 6" in finding.message


def test_import_time_registration_is_named_when_no_runtime_mutation() -> None:
    source = "HANDLERS = []\nHANDLERS.append(print)\n"
    [finding] = check_source(source)
    assert "mutated at import time on line 2" in finding.message


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


# -- ISO103 mutable class attributes --------------------------------------------------


def test_mutable_class_attribute_is_reported() -> None:
    source = """
    import collections

    class ConnectionPool:
        active = []
        by_user: dict[str, object] = {}
        queue = collections.deque()
        limit = 10

        def add(self, conn):
            self.active.append(conn)
    """
    assert findings(source) == [("ISO103", 5), ("ISO103", 6), ("ISO103", 7)]


def test_classvar_with_mutable_value_is_reported_even_in_frozen_class() -> None:
    source = """
    from typing import ClassVar
    import attrs

    @attrs.frozen
    class Event:
        registry: ClassVar[dict[str, type]] = {}
        TYPE: ClassVar[str] = "event"
    """
    assert findings(source) == [("ISO103", 7)]


def test_mutable_field_default_is_reported_in_attrs_classes() -> None:
    source = """
    import attrs

    @attrs.define
    class Session:
        runs: list[str] = attrs.field(default=[])

    @attrs.frozen
    class Snapshot:
        tags: list[str] = []
    """
    assert only(source, "ISO103") == [6, 10]


ALLOWED_CLASS_BODIES = {
    "attrs_factory": (
        "import attrs\n@attrs.define\nclass S:\n"
        "    runs: list[int] = attrs.field(factory=list)\n"
        "    seen: set[str] = attrs.Factory(set)\n"
    ),
    "dataclass_default_factory": (
        "from dataclasses import dataclass, field\n@dataclass\nclass S:\n"
        "    runs: list[int] = field(default_factory=list)\n"
    ),
    "frozen_attrs": "import attrs\n@attrs.frozen\nclass S:\n    TABLE = {'a': 1}\n",
    "attr_s_frozen": "import attr\n@attr.s(frozen=True)\nclass S:\n    TABLE = {'a': 1}\n",
    "attrs_define_frozen": (
        "import attrs\n@attrs.define(frozen=True)\nclass S:\n    TABLE = {'a': 1}\n"
    ),
    "frozen_dataclass": (
        "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass S:\n    TABLE = [1]\n"
    ),
    "subclass_of_frozen": (
        "import attrs\n@attrs.frozen\nclass Base:\n    pass\nclass S(Base):\n    TABLE = [1]\n"
    ),
    "namedtuple": "from typing import NamedTuple\nclass P(NamedTuple):\n    x: int = 0\n",
    "enum": "import enum\nclass Flags(enum.StrEnum):\n    A = 'a'\n    B = 'b'\n",
    "slots_and_match_args": "class S:\n    __slots__ = ['a']\n    __match_args__ = ('a',)\n",
    "immutable_values": "class S:\n    NAMES = ('a',)\n    LIMIT = 3\n    OK = frozenset()\n",
    "pydantic_field_default": (
        "from pydantic import BaseModel\nclass Profile(BaseModel):\n    tags: list[str] = []\n"
    ),
    "class_in_function": "def make():\n    class Local:\n        items = []\n    return Local\n",
    "instance_attribute": "class S:\n    def __init__(self):\n        self.items = []\n",
}


@pytest.mark.parametrize("source", ALLOWED_CLASS_BODIES.values(), ids=ALLOWED_CLASS_BODIES.keys())
def test_allowed_class_bodies_are_not_reported(source: str) -> None:
    assert check_source(source) == []


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


# -- ISO107 request-scoped construction at import time -------------------------------------

REQUEST_SCOPED_MODULE = """
from isolation import request_scoped
import isolation

@request_scoped
class UserContext:
    @classmethod
    def from_claims(cls, claims):
        return cls()

@isolation.request_scoped
class Session:
    pass

class AdminSession(Session):
    pass
"""


def test_request_scoped_construction_at_import_time_is_reported() -> None:
    source = REQUEST_SCOPED_MODULE + textwrap.dedent(
        """
        DEFAULT_CONTEXT = UserContext()
        ADMIN = AdminSession()
        CLAIMED = UserContext.from_claims({})

        def handler(ctx=Session()):
            return ctx

        class Holder:
            ctx = UserContext()

            def method(self, ctx=UserContext()):
                return ctx
        """
    )
    result = check_source(source)
    assert [f.code for f in result] == ["ISO107"] * 6
    assert "UserContext" in result[0].message


def test_request_scoped_construction_at_runtime_is_not_reported() -> None:
    source = REQUEST_SCOPED_MODULE + textwrap.dedent(
        """
        async def handle(claims):
            ctx = UserContext.from_claims(claims)
            session = AdminSession()
            factory = lambda: Session()
            return ctx, session, factory
        """
    )
    assert check_source(source) == []


def test_request_scoped_names_from_other_files_are_used() -> None:
    source = "from app.models import Connection\nDEFAULT = Connection()\n"
    assert check_source(source) == []
    result = check_source(source, request_scoped=frozenset({"Connection"}))
    assert [(f.code, f.line) for f in result] == [("ISO107", 2)]


def test_request_scoped_aliased_marker_is_recognised() -> None:
    source = (
        "from isolation import request_scoped as scoped\n"
        "@scoped\nclass Ctx:\n    pass\nCTX = Ctx()\n"
    )
    assert findings(source) == [("ISO107", 5)]


def test_request_scoped_classes_are_collected_across_files(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(
        "from isolation import request_scoped\n@request_scoped\nclass Context:\n    pass\n"
    )
    (tmp_path / "admin.py").write_text(
        "from models import Context\nclass Admin(Context):\n    pass\n"
    )
    (tmp_path / "app.py").write_text(
        "from admin import Admin\nfrom models import Context\nA = Admin()\nC = Context()\n"
    )
    result = check_paths([tmp_path])
    assert [(Path(f.path).name, f.line, f.code) for f in result] == [
        ("app.py", 3, "ISO107"),
        ("app.py", 4, "ISO107"),
    ]


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


def test_nursery_at_module_level_is_reported() -> None:
    source = """
    import trio

    NURSERY: trio.Nursery | None = None
    NURSERY_CM = trio.open_nursery()
    NURSERIES = {}

    async def track(user_id, nursery):
        NURSERIES[user_id] = nursery
    """
    assert only(source, "ISO109") == [4, 5, 9]
    assert only(source, "ISO101") == [6]


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


# -- pragmas ----------------------------------------------------------------------------


def test_pragma_with_reason_suppresses_the_finding() -> None:
    source = """
    CACHE = {}  # isolation: allow ISO101 -- immutable after import, filled below
    def f():
        global CACHE  # isolation: allow ISO101,ISO102 -- test fixture only
    """
    assert findings(source) == []


def test_pragma_on_first_line_of_multiline_statement() -> None:
    source = """
    from contextvars import ContextVar
    ctx = ContextVar(  # isolation: allow ISO106 -- the dict is never mutated
        "ctx",
        default={},
    )
    """
    assert findings(source) == []


def test_pragma_only_suppresses_the_codes_it_names() -> None:
    source = "CACHE = {}  # isolation: allow ISO102 -- wrong code\n"
    assert findings(source) == [("ISO101", 1)]


def test_pragma_without_reason_is_iso001_and_suppresses_nothing() -> None:
    for pragma in (
        "# isolation: allow ISO101",
        "# isolation: allow ISO101 --",
        "# isolation: allow ISO101 --   ",
    ):
        result = check_source(f"CACHE = {{}}  {pragma}\n")
        assert [(f.code, f.line) for f in result] == [("ISO101", 1), ("ISO001", 1)]
        assert "reason" in result[1].message


def test_pragma_with_unknown_code_is_iso001() -> None:
    result = check_source("CACHE = ()  # isolation: allow ISO999 -- typo\n")
    assert [(f.code, f.col) for f in result] == [("ISO001", 13)]
    assert "ISO999" in result[0].message


@pytest.mark.parametrize(
    "comment",
    [
        "# isolation: ignore ISO101 -- x",
        "# isolation: allow -- no code",
        "# isolation: allow ISO101,,ISO102 -- x",
        "# isolation: allow ISO001 -- cannot silence pragma errors",
    ],
)
def test_malformed_pragmas_are_iso001(comment: str) -> None:
    assert findings(f"X = 1  {comment}\n") == [("ISO001", 1)]


def test_pragma_text_inside_strings_and_prose_is_ignored() -> None:
    source = """
    DOC = "# isolation: allow ISO101"
    X = 1  # see the isolation: docs for details
    """
    assert findings(source) == []


def test_pragma_after_other_comment_directives() -> None:
    source = "CACHE = {}  # noqa: RUF012  # isolation: allow ISO101 -- filled once at import\n"
    assert findings(source) == []


# -- paths ------------------------------------------------------------------------------


def test_python_files_recurses_and_skips_hidden_and_cache_dirs(tmp_path: Path) -> None:
    for rel in (
        "a.py",
        "pkg/b.py",
        "pkg/notes.txt",
        ".venv/c.py",
        "pkg/__pycache__/d.py",
        ".hidden/e.py",
        "pkg/.tox/f.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in python_files([tmp_path])]
    assert found == ["a.py", "pkg/b.py"]


def test_python_files_keeps_named_files_and_dedupes(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("x = 1\n")
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    assert python_files([script, module, tmp_path]) == [str(script), str(module)]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_paths([tmp_path / "missing"])


def test_check_paths_reports_per_file_and_undecodable_files(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "leaky.py").write_text("def f():\n    global x\n")
    (tmp_path / "broken.py").write_text("def (\n")
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: utf-8 -*-\nx = '\xff'\n")
    result = check_paths([str(tmp_path)])
    assert [(Path(f.path).name, f.line, f.code) for f in result] == [
        ("broken.py", 1, "ISO000"),
        ("latin.py", 1, "ISO000"),
        ("leaky.py", 2, "ISO102"),
    ]


def test_the_isolation_package_passes_its_own_check() -> None:
    package = Path(isolation.__file__).parent
    assert check_paths([package]) == []
