"""The chat page's files: read from the package, placeholders filled, shipped in the wheel."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from app.web import StaticFile, StaticFiles, load_static
from app.web._static import PAGE_FILES

ROOT = Path(__file__).resolve().parents[3]


def test_every_file_of_the_page_is_loaded_with_its_content_type() -> None:
    static = load_static(ws_path="/ws", dev_tokens=False)
    assert set(static.by_path) == {"/", "/app.js", "/app.css"}
    html = static.get("/")
    assert html is not None
    assert html.content_type == "text/html; charset=utf-8"
    assert static.by_path["/app.js"].content_type == "text/javascript; charset=utf-8"
    assert static.by_path["/app.css"].content_type == "text/css; charset=utf-8"
    assert static.get("/nope") is None


def test_the_placeholders_are_filled() -> None:
    off = load_static(ws_path="/ws", dev_tokens=False).by_path["/"].body.decode()
    assert 'data-ws-path="/ws"' in off
    assert 'data-dev-tokens="off"' in off
    assert "{{" not in off
    on = load_static(ws_path="/chat", dev_tokens=True).by_path["/"].body.decode()
    assert 'data-ws-path="/chat"' in on
    assert 'data-dev-tokens="on"' in on


def test_the_path_is_escaped_into_the_attribute() -> None:
    body = load_static(ws_path='/w"><script>', dev_tokens=False).by_path["/"].body.decode()
    assert 'data-ws-path="/w&quot;&gt;&lt;script&gt;"' in body
    assert "<script>" not in body.split("</head>")[1]


def test_nothing_is_loaded_from_another_host() -> None:
    static = load_static(ws_path="/ws", dev_tokens=True)
    for file in static.by_path.values():
        text = file.body.decode()
        # Links in comments aside, the page names no other origin.
        assert "http://" not in text
        assert "https://" not in text
        assert "@import" not in text
        assert "@font-face" not in text


def test_files_are_immutable_and_reprs_are_short() -> None:
    static = load_static(ws_path="/ws", dev_tokens=False)
    with pytest.raises(TypeError):
        static.by_path["/x"] = StaticFile(b"", "text/plain")  # type: ignore[index]
    assert "bytes>" in repr(static.by_path["/"])
    copy = StaticFiles({"/": StaticFile(b"x", "text/plain")})
    assert copy.get("/") == StaticFile(b"x", "text/plain")


def test_the_package_data_ships_every_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert "app.web" in setuptools["packages"]
    patterns = setuptools["package-data"]["app.web"]
    folder = ROOT / "app" / "web" / "static"
    shipped = {
        p.name for p in folder.iterdir() if any(fnmatch(f"static/{p.name}", g) for g in patterns)
    }
    assert shipped == {name for _, name, _ in PAGE_FILES}
    assert {p.name for p in folder.iterdir()} == shipped
