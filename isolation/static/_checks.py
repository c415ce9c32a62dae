"""Scope-aware checks of the static isolation checker: ISO102, ISO104-ISO106, ISO108, ISO109.

:class:`FileChecker` walks one file keeping track of scopes (module, class, function)
so that a name is known to be module-level or local; it also records where
module-level names are mutated, which the ISO101 check of
:class:`isolation.static._module.ModuleChecks` reports. :meth:`FileChecker.run`
returns :class:`RawFinding` values; pragmas, paths and sorting are applied by
:mod:`isolation.static._checker`.
"""

from __future__ import annotations

import ast
from typing import Final

import attrs

from ._model import RawFinding
from ._module import ModuleChecks, Mutation, stmt_first_line, walk_scope
from ._names import (
    MUTATING_FUNCTIONS,
    MUTATING_METHODS,
    ClassKind,
    call_name,
    mentions,
    root_name,
)

__all__ = ["FileChecker"]

_NAMED_BINDERS: Final = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler)


@attrs.frozen
class _Frame:
    kind: str  # "module", "class" or "function"
    name: str
    locals: frozenset[str]
    globals: frozenset[str] = frozenset()
    nurseries: frozenset[str] = frozenset()
    first_param: str | None = None
    is_classmethod: bool = False
    class_kind: str = ClassKind.MUTABLE


def _params(args: ast.arguments) -> list[ast.arg]:
    out = [*args.posonlyargs, *args.args]
    if args.vararg:
        out.append(args.vararg)
    out.extend(args.kwonlyargs)
    if args.kwarg:
        out.append(args.kwarg)
    return out


class FileChecker(ModuleChecks, ast.NodeVisitor):
    """Runs every check on one file; :meth:`run` returns the raw findings."""

    def __init__(
        self, tree: ast.Module, *, marked: frozenset[str], extra_mutable: frozenset[str]
    ) -> None:
        super().__init__(tree, marked=marked, extra_mutable=extra_mutable)
        self.frames: list[_Frame] = []

    def run(self) -> list[RawFinding]:
        self.visit(self.tree)  # scope-aware checks; records mutations first
        self.check_module_level()
        self.check_import_time(self.tree.body)
        return self.findings

    def _in_function(self) -> bool:
        return any(frame.kind == "function" for frame in self.frames)

    def _where(self) -> str | None:
        names = [f.name for f in self.frames if f.kind != "module"]
        if not self._in_function():
            return None
        return ".".join(names)

    def _is_module_name(self, name: str) -> bool:
        """Whether ``name`` at the current point refers to a module-level assigned name."""
        for index in range(len(self.frames) - 1, -1, -1):
            frame = self.frames[index]
            if frame.kind == "module":
                return name in self.module_names
            if frame.kind == "class" and index != len(self.frames) - 1:
                continue  # class scopes are invisible to the functions inside them
            if name in frame.globals:
                return name in self.module_names
            if name in frame.locals:
                return False
        return False

    def _is_local(self, name: str) -> bool:
        for frame in reversed(self.frames):
            if frame.kind == "function":
                if name in frame.globals:
                    return False
                if name in frame.locals:
                    return True
        return False

    def _nursery_like(self, expr: ast.expr | None) -> bool:
        return self.nursery_like(expr, self.frames[-1].nurseries if self.frames else frozenset())

    def _record_mutation(self, target: ast.expr | None, *, rebind: bool = False) -> None:
        name = root_name(target) if target is not None else None
        if name is not None and self._is_module_name(name.id):
            mutation = Mutation(name.lineno, self._where(), rebind=rebind)
            self.mutations.setdefault(name.id, []).append(mutation)

    # -- scopes ------------------------------------------------------------

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt):
            outer, self.stmt_line = self.stmt_line, stmt_first_line(node)
            super().visit(node)
            self.stmt_line = outer
        else:
            super().visit(node)

    def visit_Module(self, node: ast.Module) -> None:
        local = self.module_names | self.resolver.module_defs | frozenset(self.resolver.imports)
        self.frames.append(_Frame("module", "<module>", frozenset(local)))
        self.generic_visit(node)
        self.frames.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        kind = self.resolver.class_kind(node)
        if not self._in_function():
            self.check_class_body(node, kind)
        names = {
            n.id
            for n in walk_scope(node.body)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        self.frames.append(_Frame("class", node.name, frozenset(names), class_kind=kind))
        for stmt in node.body:
            self.visit(stmt)
        self.frames.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        if not self._in_function():
            self._check_memoisation(node)
        self.frames.append(self._function_frame(node))
        for stmt in node.body:
            self.visit(stmt)
        self.frames.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        params = frozenset(a.arg for a in _params(node.args))
        self.frames.append(_Frame("function", "<lambda>", params))
        self.visit(node.body)
        self.frames.pop()

    def _function_frame(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> _Frame:
        params = _params(node.args)
        local = {a.arg for a in params}
        nurseries = {a.arg for a in params if mentions(a.annotation, "Nursery")}
        declared: set[str] = set()
        for child in walk_scope(node.body):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store | ast.Del):
                local.add(child.id)
            elif isinstance(child, ast.Global):
                declared.update(child.names)
            elif isinstance(child, ast.Nonlocal):
                local.update(child.names)
            elif isinstance(child, ast.Import | ast.ImportFrom):
                local.update((a.asname or a.name).partition(".")[0] for a in child.names)
            elif isinstance(child, _NAMED_BINDERS) and child.name:
                local.add(child.name)
            elif isinstance(child, ast.With | ast.AsyncWith):
                for item in child.items:
                    if isinstance(item.optional_vars, ast.Name) and self._nursery_like(
                        item.context_expr
                    ):
                        nurseries.add(item.optional_vars.id)
        parent = self.frames[-1] if self.frames else None
        is_method = parent is not None and parent.kind == "class"
        decorators = {call_name(d) for d in node.decorator_list}
        positional = [*node.args.posonlyargs, *node.args.args]
        first = positional[0].arg if positional and "staticmethod" not in decorators else None
        return _Frame(
            "function",
            node.name,
            frozenset(local - declared),
            frozenset(declared),
            frozenset(nurseries),
            first_param=first if is_method else None,
            is_classmethod=is_method and "classmethod" in decorators,
        )

    # -- ISO102 global -------------------------------------------------------

    def visit_Global(self, node: ast.Global) -> None:
        names = ", ".join(node.names)
        self.report(
            node,
            "ISO102",
            f"`global {names}` rebinds process-wide state that every connection shares; "
            "keep the state in the connection's own objects",
        )

    # -- mutations and ISO109 stores ------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._store(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._store(node.target, node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._record_mutation(node.target, rebind=isinstance(node.target, ast.Name))
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Subscript | ast.Attribute):
                self._record_mutation(target)
        self.generic_visit(node)

    def _store(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._store(elt, value)
            return
        if isinstance(target, ast.Subscript | ast.Attribute):
            self._record_mutation(target)
        if not self._in_function() or not self._nursery_like(value):
            return
        frame = self.frames[-1]
        owner = root_name(target)
        if isinstance(target, ast.Subscript) and owner and self._is_module_name(owner.id):
            self.report(
                target,
                "ISO109",
                f"nursery stored in module-level '{owner.id}': tasks started in it escape "
                "the connection's own nursery",
            )
        elif isinstance(target, ast.Name) and target.id in frame.globals:
            self.report(
                target,
                "ISO109",
                f"nursery stored in module global '{target.id}': tasks started in it "
                "outlive the connection that spawned them and run beside other users' tasks",
            )
        elif isinstance(target, ast.Attribute) and self._is_shared_owner(target.value, frame):
            self.report(
                target,
                "ISO109",
                f"nursery stored on class or module attribute '{ast.unparse(target)}': "
                "tasks started in it escape the connection's own nursery",
            )

    def _is_shared_owner(self, owner: ast.expr, frame: _Frame) -> bool:
        """Whether ``owner.attr = ...`` writes to a class or module, not an instance."""
        if isinstance(owner, ast.Call):
            return call_name(owner.func) == "type"
        if isinstance(owner, ast.Attribute):
            return owner.attr == "__class__"
        if not isinstance(owner, ast.Name):
            return False
        if owner.id == frame.first_param:
            return frame.is_classmethod
        return not self._is_local(owner.id)

    # -- calls: mutations, ISO106, ISO108 ------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = call_name(func)
        if isinstance(func, ast.Attribute) and func.attr in MUTATING_METHODS:
            self._record_mutation(func.value)
            owner = root_name(func.value)
            if (
                owner is not None
                and self._in_function()
                and self._is_module_name(owner.id)
                and any(self._nursery_like(arg) for arg in node.args)
            ):
                self.report(
                    node,
                    "ISO109",
                    f"nursery added to module-level '{owner.id}': tasks started in it "
                    "escape the connection's own nursery",
                )
        elif node.args and self.resolver.resolve(func) in MUTATING_FUNCTIONS:
            self._record_mutation(node.args[0])
        if name == "spawn_system_task":
            self.report(
                node,
                "ISO108",
                "spawn_system_task starts a task in the system nursery, outside the "
                "connection's nursery: it is not cancelled when the connection ends",
            )
        elif name == "ContextVar":
            for keyword in node.keywords:
                desc = self.resolver.mutable(keyword.value) if keyword.arg == "default" else None
                if desc is not None:
                    self.report(
                        keyword.value,
                        "ISO106",
                        f"ContextVar default is a mutable {desc}: every context that never "
                        "set the variable shares that one object; use an immutable default",
                    )
        elif (
            isinstance(func, ast.Attribute)
            and func.attr == "set"
            and call_name(func.value) in self.resolver.context_vars
            and len(node.args) == 1
            and not node.keywords
        ):
            desc = self.resolver.mutable(node.args[0])
            if desc is not None:
                self.report(
                    node,
                    "ISO106",
                    f"ContextVar set to a mutable {desc}: child tasks copy the context but "
                    "share the object; store an immutable value (tuple, frozen attrs class)",
                )
        self.generic_visit(node)

    # -- ISO104/ISO105 memoisation -----------------------------------------------

    def _check_memoisation(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        parent = self.frames[-1] if self.frames else None
        in_class = parent is not None and parent.kind == "class"
        decorators = {call_name(d) for d in node.decorator_list}
        params = [a.arg for a in _params(node.args)]
        if in_class and "staticmethod" not in decorators and node.args.posonlyargs + node.args.args:
            params = params[1:]
        for dec in node.decorator_list:
            if self.resolver.is_memo_decorator(dec) and params:
                shown = ast.unparse(dec.func if isinstance(dec, ast.Call) else dec)
                self.report(
                    dec,
                    "ISO104",
                    f"@{shown} on {node.name}({', '.join(params)}) memoises across users: "
                    "one process-wide cache returns results computed for one user to another",
                )
            target = dec.func if isinstance(dec, ast.Call) else dec
            if (
                in_class
                and parent is not None
                and parent.class_kind in ClassKind.CHANGEABLE
                and self.resolver.resolves_to(target, "functools.cached_property")
            ):
                self.report(
                    dec,
                    "ISO105",
                    f"cached_property {node.name} on non-frozen class {parent.name} "
                    "memoises on the instance; if the instance is shared, the cached value "
                    "is shared across users",
                )
