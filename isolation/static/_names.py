"""Name resolution and value classification for the static isolation checker.

Everything here works on one parsed file: imports are resolved to dotted names
(``dd`` -> ``collections.defaultdict``), classes defined in the file are sorted into
frozen and mutable ones, and expressions are classified as mutable or not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = [
    "DEFAULT_MUTABLE_CONSTRUCTORS",
    "MUTATING_METHODS",
    "ClassKind",
    "Resolver",
    "module_level_statements",
]

#: Calls whose result is a mutable container (matched on the resolved dotted name).
DEFAULT_MUTABLE_CONSTRUCTORS: Final = frozenset(
    {
        "builtins.dict",
        "builtins.dict.fromkeys",
        "builtins.list",
        "builtins.set",
        "builtins.bytearray",
        "collections.defaultdict",
        "collections.deque",
        "collections.OrderedDict",
        "collections.OrderedDict.fromkeys",
        "collections.Counter",
        "collections.ChainMap",
        "collections.UserDict",
        "collections.UserList",
        "weakref.WeakValueDictionary",
        "weakref.WeakKeyDictionary",
        "weakref.WeakSet",
        "queue.Queue",
        "queue.LifoQueue",
        "queue.PriorityQueue",
        "queue.SimpleQueue",
        "asyncio.Queue",
        "asyncio.LifoQueue",
        "asyncio.PriorityQueue",
        "array.array",
        "io.StringIO",
        "io.BytesIO",
        "trio.open_memory_channel",
    }
)

#: Method names that change the object they are called on.
MUTATING_METHODS: Final = frozenset(
    {
        "append",
        "extend",
        "insert",
        "remove",
        "pop",
        "popitem",
        "clear",
        "update",
        "setdefault",
        "add",
        "discard",
        "sort",
        "reverse",
        "appendleft",
        "extendleft",
        "popleft",
        "rotate",
        "put",
        "put_nowait",
        "move_to_end",
        "subtract",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
        "__setitem__",
        "__delitem__",
    }
)

#: Functions that change their first argument in place.
MUTATING_FUNCTIONS: Final = frozenset(
    {
        "heapq.heappush",
        "heapq.heappop",
        "heapq.heapify",
        "heapq.heapreplace",
        "heapq.heappushpop",
        "bisect.insort",
        "bisect.insort_left",
        "bisect.insort_right",
    }
)

_FROZEN_DECORATORS: Final = frozenset({"attrs.frozen", "attr.frozen"})
_FROZEN_IF_KEYWORD: Final = frozenset(
    {
        "attrs.define",
        "attrs.mutable",
        "attr.define",
        "attr.mutable",
        "attr.s",
        "attr.attrs",
        "attr.dataclass",
        "dataclasses.dataclass",
    }
)
_ENUM_BASES: Final = frozenset(
    f"enum.{name}" for name in ("Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "ReprEnum")
)
_NAMEDTUPLE_BASES: Final = frozenset({"typing.NamedTuple", "typing_extensions.NamedTuple"})
_NAMEDTUPLE_FACTORIES: Final = frozenset({"collections.namedtuple", "typing.NamedTuple"})
_MODEL_BASES: Final = frozenset({"pydantic.BaseModel", "msgspec.Struct"})


class ClassKind:
    """How instances of a class behave, as far as shared state goes."""

    MUTABLE: Final = "mutable"
    MODEL: Final = "model"  # mutable, but field defaults are copied (pydantic, msgspec)
    FROZEN: Final = "frozen"  # frozen attrs class or frozen dataclass
    NAMEDTUPLE: Final = "namedtuple"
    ENUM: Final = "enum"

    #: Kinds whose instances can be changed after construction.
    CHANGEABLE: Final = frozenset({MUTABLE, MODEL})


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def module_level_statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import time, descending into compound statements.

    Function and class bodies are not entered (the definitions themselves are
    yielded); ``if TYPE_CHECKING:`` bodies are skipped (they never run).
    """
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from module_level_statements(stmt.body)
            yield from module_level_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from module_level_statements(stmt.body)
            for handler in stmt.handlers:
                yield from module_level_statements(handler.body)
            yield from module_level_statements(stmt.orelse)
            yield from module_level_statements(stmt.finalbody)
        elif isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
            yield from module_level_statements(stmt.body)
            yield from module_level_statements(stmt.orelse)
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            yield from module_level_statements(stmt.body)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                yield from module_level_statements(case.body)


def names_in_target(target: ast.expr) -> Iterator[ast.Name]:
    """The plain names bound by an assignment target (``a``, ``a, *b``)."""
    if isinstance(target, ast.Name):
        yield target
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from names_in_target(elt)
    elif isinstance(target, ast.Starred):
        yield from names_in_target(target.value)


def root_name(expr: ast.expr) -> ast.Name | None:
    """``REG`` for ``REG``, ``REG[k]``, ``REG.attr[k].x``; otherwise ``None``."""
    while isinstance(expr, ast.Subscript | ast.Attribute):
        expr = expr.value
    return expr if isinstance(expr, ast.Name) else None


def call_name(func: ast.expr) -> str | None:
    """The last component of a call target: ``f`` for ``f()`` and ``a.b.f()``."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def mentions(expr: ast.expr | None, name: str) -> bool:
    """Whether an annotation mentions ``name`` (as a name, attribute or in a string)."""
    if expr is None:
        return False
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and node.id == name:
            return True
        if isinstance(node, ast.Attribute) and node.attr == name:
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and name in node.value:
            return True
    return False


class Resolver:
    """Resolves names of one file and classifies its classes and values."""

    def __init__(self, tree: ast.Module, extra_mutable: frozenset[str]) -> None:
        self.imports: dict[str, str] = {}
        self.module_defs: set[str] = set()
        self.classes: dict[str, ast.ClassDef] = {}
        #: Names and attribute names bound to a ContextVar somewhere in the file.
        self.context_vars: set[str] = set()
        self.extra_mutable = extra_mutable
        self._kinds: dict[ast.ClassDef, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        top = alias.name.partition(".")[0]
                        self.imports[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                for alias in node.names:
                    full = f"{base}.{alias.name}" if node.module else f"{base}{alias.name}"
                    self.imports[alias.asname or alias.name] = full
            elif isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, node)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and _builds_context_var(node):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                self.context_vars.update(n for t in targets if (n := call_name(t)) is not None)
            elif isinstance(node, ast.arg) and mentions(node.annotation, "ContextVar"):
                self.context_vars.add(node.arg)
        for stmt in module_level_statements(tree.body):
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.module_defs.add(stmt.name)
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    self.module_defs.update(n.id for n in names_in_target(target))
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
                self.module_defs.update(n.id for n in names_in_target(stmt.target))

    # -- names -------------------------------------------------------------

    def resolve(self, expr: ast.expr) -> str | None:
        """The dotted name an expression refers to, or ``None``.

        Imported names resolve to their origin, names defined in the file to
        ``<local>.NAME`` and other bare names to ``builtins.NAME``.
        """
        if isinstance(expr, ast.Name):
            if expr.id in self.imports:
                return self.imports[expr.id]
            if expr.id in self.module_defs or expr.id in self.classes:
                return f"<local>.{expr.id}"
            return f"builtins.{expr.id}"
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            return None if base is None else f"{base}.{expr.attr}"
        return None

    def resolves_to(self, expr: ast.expr, *names: str) -> bool:
        return self.resolve(expr) in names

    def local_class(self, func: ast.expr) -> ast.ClassDef | None:
        """The class defined in this file that a call target names, if any."""
        if isinstance(func, ast.Name) and func.id not in self.imports:
            return self.classes.get(func.id)
        return None

    # -- classes -----------------------------------------------------------

    def class_kind(self, node: ast.ClassDef) -> str:
        """One of the :class:`ClassKind` values (inherited from local bases too)."""
        if node in self._kinds:
            return self._kinds[node]
        self._kinds[node] = ClassKind.MUTABLE  # guards against base cycles
        kind = self._own_kind(node)
        self._kinds[node] = kind
        return kind

    def _own_kind(self, node: ast.ClassDef) -> str:
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            name = self.resolve(target)
            if name in _FROZEN_DECORATORS:
                if not (isinstance(dec, ast.Call) and _keyword_is(dec, "frozen", False)):
                    return ClassKind.FROZEN
            elif (
                name in _FROZEN_IF_KEYWORD
                and isinstance(dec, ast.Call)
                and _keyword_is(dec, "frozen", True)
            ):
                return ClassKind.FROZEN
        for base in node.bases:
            if isinstance(base, ast.Call):
                if self.resolve(base.func) in _NAMEDTUPLE_FACTORIES:
                    return ClassKind.NAMEDTUPLE
                continue
            name = self.resolve(base)
            if name in _ENUM_BASES:
                return ClassKind.ENUM
            if name in _NAMEDTUPLE_BASES:
                return ClassKind.NAMEDTUPLE
            if name in _MODEL_BASES:
                return ClassKind.MODEL
            local = self.local_class(base)
            if local is not None and local is not node:
                inherited = self.class_kind(local)
                if inherited != ClassKind.MUTABLE:
                    return inherited
        return ClassKind.MUTABLE

    def is_memo_decorator(self, dec: ast.expr) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = self.resolve(target) or ""
        return name in _MEMO_DECORATORS

    # -- values ------------------------------------------------------------

    def mutable_call(self, call: ast.Call) -> str | None:
        """A description if the call builds a mutable object, else ``None``."""
        name = self.resolve(call.func)
        if name is None:
            return None
        short = name.rpartition(".")[2]
        if name in DEFAULT_MUTABLE_CONSTRUCTORS:
            return f"{short}()" if name.startswith("builtins.") else f"{name}()"
        for extra in self.extra_mutable:
            if extra == name or ("." not in extra and extra == short):
                return f"{short}() (configured as mutable)"
        local = self.local_class(call.func)
        if local is not None and self.class_kind(local) in ClassKind.CHANGEABLE:
            return f"instance of mutable class {local.name}"
        return None

    def mutable(self, expr: ast.expr | None) -> str | None:
        """A description if ``expr`` evaluates to a mutable object, else ``None``."""
        match expr:
            case ast.Dict():
                return "dict"
            case ast.List():
                return "list"
            case ast.Set():
                return "set"
            case ast.ListComp():
                return "list comprehension"
            case ast.DictComp():
                return "dict comprehension"
            case ast.SetComp():
                return "set comprehension"
            case ast.Call():
                return self.mutable_call(expr)
            case ast.Tuple(elts=elts):
                for elt in elts:
                    inner = self.mutable(elt)
                    if inner is not None:
                        return f"tuple holding a {inner}"
                return None
            case ast.BinOp(left=left, right=right):
                return self.mutable(left) or self.mutable(right)
            case ast.BoolOp(values=values):
                for value in values:
                    inner = self.mutable(value)
                    if inner is not None:
                        return inner
                return None
            case ast.IfExp(body=body, orelse=orelse):
                return self.mutable(body) or self.mutable(orelse)
            case ast.NamedExpr(value=value):
                return self.mutable(value)
        return None

    def field_default(self, expr: ast.expr | None) -> str | None:
        """A description if ``expr`` is ``attrs.field(default=<mutable>)`` or alike."""
        if not isinstance(expr, ast.Call) or self.resolve(expr.func) not in _FIELD_FUNCTIONS:
            return None
        for keyword in expr.keywords:
            if keyword.arg == "default":
                inner = self.mutable(keyword.value)
                if inner is not None:
                    return f"{inner} default"
        return None


_MEMO_DECORATORS: Final = frozenset(
    {
        "functools.lru_cache",
        "functools.cache",
        "async_lru.alru_cache",
        "cachetools.cached",
        "cachetools.func.lru_cache",
        "cachetools.func.ttl_cache",
        "cachetools.func.lfu_cache",
        "cachetools.func.rr_cache",
        "cachetools.func.fifo_cache",
        "cachetools.func.mru_cache",
    }
)
_FIELD_FUNCTIONS: Final = frozenset(
    {"attrs.field", "attr.ib", "attr.attrib", "attr.field", "dataclasses.field"}
)


def _builds_context_var(node: ast.Assign | ast.AnnAssign) -> bool:
    if isinstance(node, ast.AnnAssign) and mentions(node.annotation, "ContextVar"):
        return True
    return isinstance(node.value, ast.Call) and call_name(node.value.func) == "ContextVar"


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(
        kw.arg == name and isinstance(kw.value, ast.Constant) and kw.value.value is value
        for kw in call.keywords
    )
