"""Import-time checks of the static isolation checker: ISO101, ISO103, ISO107, ISO109.

:class:`ModuleChecks` holds the state of one file's check and the checks that look at
what runs when the module is imported (module-level statements and class bodies);
:class:`isolation.static._checks.FileChecker` adds the scope-aware checks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

from ._model import RawFinding
from ._names import (
    ClassKind,
    Resolver,
    call_name,
    mentions,
    module_level_statements,
    names_in_target,
)

__all__ = ["ClassInfo", "ModuleChecks", "Mutation", "class_infos", "stmt_first_line", "walk_scope"]

#: Names a class body may bind to a list without sharing anything per instance.
_CLASS_BODY_ALLOWED: Final = frozenset({"__slots__", "__match_args__", "__all__"})
#: Read-only types: ``X: Final[Mapping[...]] = {...}`` is a constant if never mutated.
_READ_ONLY_TYPES: Final = frozenset(
    {
        "Mapping",
        "Sequence",
        "AbstractSet",
        "Collection",
        "Container",
        "Iterable",
        "Reversible",
        "frozenset",
        "tuple",
        "FrozenSet",
        "Tuple",
    }
)
_ALTERNATE_CONSTRUCTORS: Final = ("from_", "create", "new", "build", "make")
_SCOPES: Final = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


@attrs.frozen
class ClassInfo:
    """A class of a checked file: its name, the names of its bases, its marker."""

    name: str
    bases: tuple[str, ...]
    marked: bool


def class_infos(tree: ast.Module) -> list[ClassInfo]:
    """Every class of a file, for collecting request-scoped classes across files.

    A class is marked when decorated with ``request_scoped`` (bare, as an attribute
    such as ``isolation.request_scoped``, or under an ``import ... as`` alias).
    """
    markers = {"request_scoped"}
    classes: list[ast.ClassDef] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            markers.update(a.asname for a in node.names if a.name == "request_scoped" and a.asname)
        elif isinstance(node, ast.ClassDef):
            classes.append(node)
    out = []
    for node in classes:
        bases = tuple(name for base in node.bases if (name := call_name(base)) is not None)
        marked = any(
            call_name(dec.func if isinstance(dec, ast.Call) else dec) in markers
            for dec in node.decorator_list
        )
        out.append(ClassInfo(node.name, bases, marked))
    return out


@attrs.frozen
class Mutation:
    line: int
    where: str | None  # function name; None at import time
    rebind: bool = False  # ``X += ...`` on the name itself (covered by ISO102)

    def describe(self) -> str:
        if self.where is None:
            return f"mutated at import time on line {self.line}"
        return f"mutated in {self.where}() on line {self.line}"


def walk_scope(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Nodes of one scope: nested functions, classes and lambdas are not entered."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def stmt_first_line(stmt: ast.stmt) -> int:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return min([stmt.lineno, *(dec.lineno for dec in stmt.decorator_list)])
    return stmt.lineno


class ModuleChecks:
    """State of one file's check, and the checks of what runs at import time."""

    def __init__(
        self, tree: ast.Module, *, marked: frozenset[str], extra_mutable: frozenset[str]
    ) -> None:
        self.tree = tree
        self.resolver = Resolver(tree, extra_mutable)
        self.marked = marked
        self.findings: list[RawFinding] = []
        self.mutations: dict[str, list[Mutation]] = {}
        self.module_names = self._module_assigned_names()
        self.stmt_line = 1

    def report(self, node: ast.expr | ast.stmt, code: str, message: str) -> None:
        self.findings.append(
            RawFinding(node.lineno, node.col_offset, code, message, self.stmt_line)
        )

    def _module_assigned_names(self) -> frozenset[str]:
        names: set[str] = set()
        for stmt in module_level_statements(self.tree.body):
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    names.update(n.id for n in names_in_target(target))
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
                names.update(n.id for n in names_in_target(stmt.target))
        return frozenset(names)

    def nursery_like(self, expr: ast.expr | None, nurseries: frozenset[str] = frozenset()) -> bool:
        """Whether ``expr`` looks like a nursery (or one of its methods)."""
        if isinstance(expr, ast.Name):
            return expr.id in nurseries or "nursery" in expr.id.lower()
        if isinstance(expr, ast.Attribute):
            return "nursery" in expr.attr.lower() or self.nursery_like(expr.value, nurseries)
        if isinstance(expr, ast.Call):
            return call_name(expr.func) == "open_nursery"
        return False

    # -- ISO103 class attributes -------------------------------------------------

    def check_class_body(self, node: ast.ClassDef, kind: str) -> None:
        for stmt in module_level_statements(node.body):
            if isinstance(stmt, ast.Assign):
                names = [n.id for t in stmt.targets for n in names_in_target(t)]
                if names and set(names) <= _CLASS_BODY_ALLOWED:
                    continue
                self._class_value(node, kind, ", ".join(names), stmt.value, stmt, False)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                classvar = mentions(stmt.annotation, "ClassVar")
                if classvar and mentions(stmt.annotation, "Nursery"):
                    self.report_at(
                        stmt,
                        "ISO109",
                        f"class-level nursery {node.name}.{stmt.target.id}: tasks started in "
                        "it escape the connection's own nursery",
                    )
                if stmt.value is not None:
                    self._class_value(node, kind, stmt.target.id, stmt.value, stmt, classvar)

    def _class_value(
        self,
        cls: ast.ClassDef,
        kind: str,
        name: str,
        value: ast.expr,
        stmt: ast.Assign | ast.AnnAssign,
        classvar: bool,
    ) -> None:
        if kind == ClassKind.ENUM:
            return
        field = self.resolver.field_default(value)
        desc = self.resolver.mutable(value)
        if desc is not None and self.constructs_marked(value):
            return  # reported as ISO107
        is_field = isinstance(stmt, ast.AnnAssign) and not classvar
        if field is not None:
            message = (
                f"field '{name}' of {cls.name} has a {field}: one object shared by every "
                "instance; use attrs.field(factory=...) or field(default_factory=...)"
            )
        elif desc is None:
            return
        elif kind == ClassKind.MODEL and is_field:
            return  # pydantic/msgspec copy field defaults into each instance
        elif kind in ClassKind.CHANGEABLE or classvar:
            message = (
                f"mutable class attribute '{name}' ({desc}) of {cls.name} is shared by "
                "every instance and every connection"
            )
        elif is_field:
            message = (
                f"field '{name}' of {cls.name} defaults to one {desc} shared by every "
                "instance (defaults are not copied); use attrs.field(factory=...)"
            )
        else:
            return
        self.report_at(stmt, "ISO103", message)

    def report_at(self, stmt: ast.stmt, code: str, message: str) -> None:
        self.findings.append(
            RawFinding(stmt.lineno, stmt.col_offset, code, message, stmt_first_line(stmt))
        )

    # -- ISO101 module-level values (and ISO109 module-level nurseries) ---------------

    def check_module_level(self) -> None:
        annotations: dict[str, ast.expr] = {}
        reported: set[str] = set()
        first_def: dict[str, ast.stmt] = {}
        for stmt in module_level_statements(self.tree.body):
            pairs: list[tuple[str, ast.expr | None]] = []
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                annotations[stmt.target.id] = stmt.annotation
                if mentions(stmt.annotation, "Nursery"):
                    self.report_at(
                        stmt,
                        "ISO109",
                        f"module-level nursery slot '{stmt.target.id}': tasks started in a "
                        "process-wide nursery escape the connection's own nursery",
                    )
                if stmt.value is not None:
                    pairs.append((stmt.target.id, stmt.value))
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    pairs.extend(_pair_targets(target, stmt.value))
            for name, value in pairs:
                first_def.setdefault(name, stmt)
                if name == "__all__" or value is None:
                    continue
                if self.nursery_like(value):
                    self.report_at(
                        stmt,
                        "ISO109",
                        f"nursery stored at module level in '{name}': tasks started in it "
                        "escape the connection's own nursery",
                    )
                    continue
                desc = self.resolver.mutable(value)
                if desc is None or self.constructs_marked(value):
                    continue
                if self._read_only_constant(annotations.get(name), name):
                    continue
                reported.add(name)
                self.report_at(
                    stmt,
                    "ISO101",
                    f"module-level '{name}' ({desc}) is shared by every connection in the "
                    f"process ({self._mutation_note(name)}); keep per-user state in the "
                    "connection's context or use an immutable value",
                )
        for name, found in sorted(self.mutations.items()):
            runtime = [m for m in found if m.where is not None and not m.rebind]
            if name in reported or not runtime or name not in first_def:
                continue
            self.report_at(
                first_def[name],
                "ISO101",
                f"module-level '{name}' is {runtime[0].describe()}: state shared by every "
                "connection in the process",
            )

    def _mutation_note(self, name: str) -> str:
        found = self.mutations.get(name, [])
        runtime = [m for m in found if m.where is not None]
        if runtime:
            return runtime[0].describe()
        if found:
            return found[0].describe()
        return "not mutated in this file"

    def _read_only_constant(self, annotation: ast.expr | None, name: str) -> bool:
        """``X: Final[Mapping[...]] = {...}`` never mutated in the file is a constant."""
        if annotation is None or name in self.mutations:
            return False
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return False
        if not isinstance(annotation, ast.Subscript) or call_name(annotation.value) != "Final":
            return False
        inner = annotation.slice
        if isinstance(inner, ast.Subscript):
            inner = inner.value
        return call_name(inner) in _READ_ONLY_TYPES

    # -- ISO107 request-scoped classes built at import time --------------------------

    def constructs_marked(self, expr: ast.expr) -> bool:
        if not isinstance(expr, ast.Call):
            return False
        func = expr.func
        if call_name(func) in self.marked:
            return True
        return (
            isinstance(func, ast.Attribute)
            and call_name(func.value) in self.marked
            and func.attr.startswith(_ALTERNATE_CONSTRUCTORS)
        )

    def check_import_time(self, body: list[ast.stmt]) -> None:
        for stmt in module_level_statements(body):
            self.stmt_line = stmt_first_line(stmt)
            for expr in _import_time_exprs(stmt):
                for node in walk_scope([expr]):
                    if isinstance(node, ast.Lambda):
                        for default in [*node.args.defaults, *node.args.kw_defaults]:
                            if default is not None:
                                self._check_import_time_expr(default)
                    elif isinstance(node, ast.expr):
                        self._check_construction(node)
            if isinstance(stmt, ast.ClassDef):
                self.check_import_time(stmt.body)

    def _check_import_time_expr(self, expr: ast.expr) -> None:
        for node in ast.walk(expr):
            if isinstance(node, ast.expr):
                self._check_construction(node)

    def _check_construction(self, node: ast.expr) -> None:
        if isinstance(node, ast.Call) and self.constructs_marked(node):
            self.report(
                node,
                "ISO107",
                f"request-scoped {ast.unparse(node.func)} constructed at import time: one "
                "instance would be shared by every connection; build it per connection",
            )


def _pair_targets(target: ast.expr, value: ast.expr) -> list[tuple[str, ast.expr | None]]:
    """``(name, value)`` for each name bound; unpacking pairs tuple elements."""
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    if isinstance(target, ast.Tuple | ast.List):
        if (
            isinstance(value, ast.Tuple | ast.List)
            and len(value.elts) == len(target.elts)
            and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts))
        ):
            out: list[tuple[str, ast.expr | None]] = []
            for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                out.extend(_pair_targets(sub_target, sub_value))
            return out
        names = [n.id for n in names_in_target(target)]
        return [(", ".join(names), value), *((n, None) for n in names)] if names else []
    return []


def _import_time_exprs(stmt: ast.stmt) -> list[ast.expr]:
    """Expressions of one module-level statement evaluated when the module is imported."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        defaults = [d for d in stmt.args.kw_defaults if d is not None]
        return [*stmt.decorator_list, *stmt.args.defaults, *defaults]
    if isinstance(stmt, ast.ClassDef):
        return [*stmt.decorator_list, *stmt.bases, *(k.value for k in stmt.keywords)]
    if isinstance(stmt, ast.If | ast.While):
        return [stmt.test]
    if isinstance(stmt, ast.For | ast.AsyncFor):
        return [stmt.iter]
    if isinstance(stmt, ast.With | ast.AsyncWith):
        return [item.context_expr for item in stmt.items]
    if isinstance(stmt, ast.Match):
        return [stmt.subject]
    if isinstance(stmt, ast.Try | ast.TryStar):
        return [h.type for h in stmt.handlers if h.type is not None]
    return [child for child in ast.iter_child_nodes(stmt) if isinstance(child, ast.expr)]
