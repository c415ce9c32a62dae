"""The chat page's files, read from the package (``app/web/static/``).

:func:`load_static` is called by each transport when it starts and its result is
passed down; nothing is read or kept at import time. ``index.html`` carries two
placeholders filled in then: the WebSocket path and whether dev tokens are on, so
the page needs no request to learn them.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from importlib.resources import files
from types import MappingProxyType
from typing import Final

import attrs

__all__ = ["PAGE_FILES", "StaticFile", "StaticFiles", "load_static"]

#: URL path, file name in ``static/``, content type.
PAGE_FILES: Final = (
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/app.js", "app.js", "text/javascript; charset=utf-8"),
    ("/app.css", "app.css", "text/css; charset=utf-8"),
)
_WS_PATH: Final = "{{ws_path}}"
_DEV_TOKENS: Final = "{{dev_tokens}}"


@attrs.frozen
class StaticFile:
    """One file of the page: its bytes and content type."""

    body: bytes = attrs.field(repr=lambda body: f"<{len(body)} bytes>")
    content_type: str


def _read_only(files: Mapping[str, StaticFile]) -> Mapping[str, StaticFile]:
    return MappingProxyType(dict(files))


@attrs.frozen
class StaticFiles:
    """The page's files by URL path; immutable, shared by every request."""

    by_path: Mapping[str, StaticFile] = attrs.field(converter=_read_only)

    def get(self, path: str) -> StaticFile | None:
        return self.by_path.get(path)


def load_static(*, ws_path: str, dev_tokens: bool) -> StaticFiles:
    """Read the page's files from the package; raises OSError if one is missing.

    ``ws_path`` (``--path``) and ``dev_tokens`` (``--dev``) are written into
    ``index.html`` as attributes of ``<html>``, which ``app.js`` reads.
    """
    folder = files("app.web").joinpath("static")
    by_path: dict[str, StaticFile] = {}
    for path, name, content_type in PAGE_FILES:
        body = folder.joinpath(name).read_bytes()
        if name == "index.html":
            text = body.decode("utf-8")
            text = text.replace(_WS_PATH, html.escape(ws_path, quote=True))
            text = text.replace(_DEV_TOKENS, "on" if dev_tokens else "off")
            body = text.encode("utf-8")
        by_path[path] = StaticFile(body, content_type)
    return StaticFiles(by_path)
