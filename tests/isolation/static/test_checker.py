"""The checker's entry points: the public API, ISO000, positions and order, pragmas, paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import isolation
from isolation import CODES, Finding, check_paths, check_source
from isolation.static._checker import python_files


def findings(source: str) -> list[tuple[str, int]]:
    """``(code, line)`` of every finding in a dedented snippet."""
    return [(f.code, f.line) for f in check_source(textwrap.dedent(source), "snippet.py")]


# -- API ------------------------------------------------------------------------


def test_public_api_is_reexported() -> None:
    assert isolation.check_source is check_source
    assert isolation.check_paths is check_paths
    assert isolation.Finding is Finding
    assert isolation.CODES is CODES


def test_every_code_is_documented_in_the_module_docstring() -> None:
    from isolation.static import _checker

    assert _checker.__doc__ is not None
    for code in CODES:
        assert code in _checker.__doc__


# -- findings: positions, order, ISO000 ------------------------------------------------


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


# -- request-scoped classes from other files -------------------------------------------


def test_request_scoped_names_from_other_files_are_used() -> None:
    source = "from app.models import Connection\nDEFAULT = Connection()\n"
    assert check_source(source) == []
    result = check_source(source, request_scoped=frozenset({"Connection"}))
    assert [(f.code, f.line) for f in result] == [("ISO107", 2)]


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
