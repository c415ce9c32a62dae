"""Static isolation checker: finds state that one user's connection could leak to another.

The checker parses Python files with :mod:`ast` (it never imports them) and reports
process-wide state that every connection of a server shares. Findings:

ISO000  the file cannot be checked: syntax error, undecodable or unreadable.
ISO001  invalid pragma: no ``-- reason``, unknown code, or not ``allow CODE[,CODE]``.
ISO101  module-level mutable value: a dict/list/set/bytearray literal or comprehension,
        a call to a known mutable constructor (``dict()``, ``collections.defaultdict``,
        ``deque``, ``OrderedDict``, ``Counter``, ``ChainMap``, weakref containers,
        ``queue.Queue``, ``trio.open_memory_channel``, ...), or an instance of a
        non-frozen class defined in the same file; also any module-level name that a
        function mutates (``REGISTRY[k] = v``, ``CACHE.append(x)``). The finding is on
        the definition and names a place where the value is mutated.
ISO102  a ``global`` statement (``nonlocal`` is fine).
ISO103  a mutable class attribute shared by every instance: a mutable value in the
        body of a class that is not a frozen attrs class/frozen dataclass, NamedTuple
        or Enum; a ``ClassVar`` with a mutable value in any class; a field whose
        default is one mutable object (``x: list[int] = []``,
        ``attrs.field(default=[])``), frozen or not. Field defaults of pydantic and
        msgspec models are copied per instance and not reported.
ISO104  ``functools.lru_cache``/``functools.cache`` (or ``async_lru``/``cachetools``
        equivalents) on a module-level function or method taking parameters other
        than ``self``/``cls``: the cache is keyed by arguments and shared by users.
ISO105  ``functools.cached_property`` on a class that is not frozen.
ISO106  a mutable value put in a ContextVar: ``ContextVar(..., default=<mutable>)``
        or ``var.set(<mutable literal or constructor>)`` where ``var`` is a name or
        attribute the file binds to ``ContextVar(...)`` or annotates as ``ContextVar``.
ISO107  a request-scoped class constructed at import time: at module level, in a class
        body, in a decorator or in a default argument value. Request-scoped classes are
        those decorated with ``@request_scoped`` (:mod:`isolation._markers`) and their
        subclasses, collected by name across every checked file.
ISO108  ``trio.lowlevel.spawn_system_task``: the task runs outside the connection's
        nursery and is not cancelled with it.
ISO109  a nursery stored where other connections can reach it: at module level
        (``NURSERY = ...``, ``_nursery: trio.Nursery | None``), via ``global``, on a class
        (``cls.nursery = n`` in a classmethod, ``Server.nursery = n``,
        ``ClassVar[trio.Nursery]``) or on a module attribute.

Allowed on purpose (never reported): ``Final`` constants with immutable values; tuples,
frozensets, str/bytes/numbers; ``types.MappingProxyType(...)``; frozen attrs/dataclass
instances, NamedTuples and Enum members; ``re.compile(...)``; ``__all__`` (list or
tuple); ``TypeVar``/``ParamSpec``/``NewType`` and typing aliases; anything under
``if TYPE_CHECKING:``; ``attrs.field(factory=list)`` and ``attrs.Factory(list)``;
``X: Final[Mapping[...]] = {...}`` (or ``Sequence``, ``AbstractSet``, ...) when the
file never mutates ``X``: the read-only type is enforced by the type checker.
``logging.getLogger(...)`` is allowed: a logger is process-global, but configured once
at startup and carries no per-user data unless a handler stores it (not checked).
Instances of classes imported from elsewhere are reported only when their constructor
is in the configured list of mutable constructors (``--mutable NAME``).

Pragma: ``# isolation: allow ISO101 -- reason`` (or ``allow ISO101,ISO103 -- reason``)
on the line of a finding, or on the first line of the statement holding it, suppresses
those codes there. The reason is mandatory; a pragma without one, or naming an unknown
code, is itself reported as ISO001 and suppresses nothing.

Columns are 1-based. Known limits: the checker sees one file at a time (except for
request-scoped class names); names are matched, not types inferred, so state reached
through an alias (``reg = REGISTRY; reg[k] = v``) or built by an unknown factory is
missed, and request-scoped classes are matched by class name only.
"""

from __future__ import annotations

import ast
import errno
import io
import os
import tokenize
import warnings
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from ._checks import FileChecker
from ._model import CODES, Finding, RawFinding
from ._module import ClassInfo, class_infos
from ._names import DEFAULT_MUTABLE_CONSTRUCTORS

__all__ = [
    "CODES",
    "DEFAULT_MUTABLE_CONSTRUCTORS",
    "Finding",
    "check_paths",
    "check_source",
    "python_files",
]

#: Directory names never entered when a directory is checked (hidden ones are skipped too).
_SKIPPED_DIRS: Final = frozenset({"__pycache__", "node_modules"})
#: Codes a pragma may name: the problems themselves, not the checker's own diagnostics.
_SUPPRESSIBLE: Final = frozenset(code for code in CODES if code not in ("ISO000", "ISO001"))
_PRAGMA_PREFIX: Final = "isolation:"


@attrs.frozen
class _Parsed:
    path: str
    source: str
    tree: ast.Module | None
    error: Finding | None


def _parse(source: str, path: str) -> _Parsed:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: not our business
            tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        line, col = exc.lineno or 1, exc.offset or 1
        error = Finding(path, line, col, "ISO000", f"syntax error: {exc.msg}")
        return _Parsed(path, source, None, error)
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, deep nesting
        message = f"cannot parse: {exc or type(exc).__name__}"
        return _Parsed(path, source, None, Finding(path, 1, 1, "ISO000", message))
    return _Parsed(path, source, tree, None)


def _read(path: str) -> _Parsed:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        message = f"cannot read: {exc.strerror or exc}"
        return _Parsed(path, "", None, Finding(path, 1, 1, "ISO000", message))
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        source = data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        return _Parsed(path, "", None, Finding(path, 1, 1, "ISO000", f"cannot decode: {exc}"))
    return _parse(source.removeprefix("\ufeff"), path)


def _marked_names(infos: Sequence[ClassInfo], seed: Iterable[str]) -> frozenset[str]:
    """Names of request-scoped classes: marked ones, then their subclasses, by name."""
    marked = set(seed) | {info.name for info in infos if info.marked}
    changed = True
    while changed:
        changed = False
        for info in infos:
            if info.name not in marked and any(base in marked for base in info.bases):
                marked.add(info.name)
                changed = True
    return frozenset(marked)


# -- pragmas ------------------------------------------------------------------


@attrs.frozen
class _Pragma:
    line: int
    codes: frozenset[str]


def _parse_pragma(comment: str) -> tuple[frozenset[str], str | None]:
    """``(codes, error)`` of one ``isolation:`` comment; ``error`` is None when valid."""
    text = comment.split(_PRAGMA_PREFIX, 1)[1].strip()
    verb, _, rest = text.partition(" ")
    if verb != "allow":
        return frozenset(), "malformed pragma: expected '# isolation: allow CODE -- reason'"
    codes_text, dashes, reason = rest.partition("--")
    codes = [code.strip() for code in codes_text.split(",")]
    if not codes_text.strip() or not all(codes):
        return frozenset(), "malformed pragma: expected '# isolation: allow CODE -- reason'"
    for code in codes:
        if code not in CODES:
            return frozenset(), f"pragma names unknown code {code!r} (see --list-codes)"
        if code not in _SUPPRESSIBLE:
            return frozenset(), f"pragma cannot suppress {code}"
    if not dashes or not reason.strip():
        return frozenset(), f"pragma allowing {', '.join(codes)} needs a reason after '--'"
    return frozenset(codes), None


def _pragmas(source: str) -> tuple[list[_Pragma], list[RawFinding]]:
    pragmas: list[_Pragma] = []
    errors: list[RawFinding] = []
    if _PRAGMA_PREFIX not in source:
        return pragmas, errors  # tokenizing is the slowest step: skip it when possible
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - ast.parse accepted it
        return pragmas, errors
    for token in tokens:
        if token.type != tokenize.COMMENT or _PRAGMA_PREFIX not in token.string:
            continue
        body = token.string.lstrip("#").strip()
        if not body.startswith(_PRAGMA_PREFIX) and f"# {_PRAGMA_PREFIX}" not in token.string:
            continue  # mentions the word, is not a pragma
        line, col = token.start
        codes, error = _parse_pragma(token.string)
        if error is None:
            pragmas.append(_Pragma(line, codes))
        else:
            byte_col = len(token.line[:col].encode("utf-8"))
            errors.append(RawFinding(line, byte_col, "ISO001", error, line))
    return pragmas, errors


# -- checking -------------------------------------------------------------------


def _column(lines: Sequence[str], line: int, byte_col: int) -> int:
    """1-based character column of an :mod:`ast` UTF-8 byte offset."""
    if not 1 <= line <= len(lines):
        return byte_col + 1
    prefix = lines[line - 1].encode("utf-8")[:byte_col]
    return len(prefix.decode("utf-8", errors="replace")) + 1


def _check_parsed(
    parsed: _Parsed, marked: frozenset[str], extra_mutable: frozenset[str]
) -> list[Finding]:
    if parsed.tree is None:
        return [parsed.error] if parsed.error is not None else []
    checker = FileChecker(parsed.tree, marked=marked, extra_mutable=extra_mutable)
    try:
        raw = checker.run()
    except RecursionError:
        return [Finding(parsed.path, 1, 1, "ISO000", "code nested too deeply to check")]
    pragmas, errors = _pragmas(parsed.source)
    allowed: dict[int, frozenset[str]] = {}
    for pragma in pragmas:
        allowed[pragma.line] = allowed.get(pragma.line, frozenset()) | pragma.codes
    lines = parsed.source.splitlines()
    out: set[Finding] = set()
    for item in [*raw, *errors]:
        if item.code in allowed.get(item.line, ()) or item.code in allowed.get(item.stmt_line, ()):
            continue
        col = _column(lines, item.line, item.col)
        out.add(Finding(parsed.path, item.line, col, item.code, item.message))
    return sorted(out)


def check_source(
    source: str,
    path: str = "<string>",
    *,
    request_scoped: frozenset[str] = frozenset(),
    mutable_constructors: Iterable[str] = (),
) -> list[Finding]:
    """Check one file's source text; ``path`` is only used in the findings.

    ``request_scoped`` adds names of request-scoped classes defined elsewhere (classes
    marked in ``source`` itself are always found). ``mutable_constructors`` adds call
    targets whose result is mutable: a dotted name (``mylib.Registry``) matches the
    resolved import, a bare name (``Registry``) matches the last component.
    """
    parsed = _parse(source, path)
    infos = class_infos(parsed.tree) if parsed.tree is not None else []
    return _check_parsed(
        parsed, _marked_names(infos, request_scoped), frozenset(mutable_constructors)
    )


def python_files(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The files to check: named files as given, ``*.py`` under named directories.

    Hidden directories, ``__pycache__`` and ``node_modules`` are skipped. Raises
    :class:`FileNotFoundError` for a path that does not exist.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(file: str) -> None:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            out.append(file)

    for item in paths:
        path = os.fspath(item)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(
                    d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS
                )
                for name in sorted(files):
                    if name.endswith(".py"):
                        add(os.path.join(root, name))
        elif os.path.exists(path):
            add(path)
        else:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    return out


def check_paths(
    paths: Sequence[str | os.PathLike[str]], *, mutable_constructors: Iterable[str] = ()
) -> list[Finding]:
    """Check files and directories (see :func:`python_files`); findings are sorted.

    Request-scoped classes are collected from every file first, so a class marked in
    one file is reported when another file constructs it at import time.
    """
    parsed = [_read(path) for path in python_files(paths)]
    infos = [info for p in parsed if p.tree is not None for info in class_infos(p.tree)]
    marked = _marked_names(infos, ())
    extra = frozenset(mutable_constructors)
    findings: list[Finding] = []
    for item in parsed:
        findings.extend(_check_parsed(item, marked, extra))
    return sorted(findings)
