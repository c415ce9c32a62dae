"""Import-time checks: ISO101 module-level values, ISO103 class bodies, ISO107, ISO109."""

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


def test_request_scoped_aliased_marker_is_recognised() -> None:
    source = (
        "from isolation import request_scoped as scoped\n"
        "@scoped\nclass Ctx:\n    pass\nCTX = Ctx()\n"
    )
    assert findings(source) == [("ISO107", 5)]


# -- ISO109 nurseries at module level --------------------------------------------------


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
