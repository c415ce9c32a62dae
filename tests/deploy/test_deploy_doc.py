"""docs/deploy.md shows the nginx config the tests run: the same renderer, the same text.

The block between ``<!-- nginx-site:begin -->`` and ``<!-- nginx-site:end -->`` must be
exactly what :func:`~app.testing.render_nginx_site` renders for :data:`DOC_INPUTS`'s
inputs; when the renderer changes, paste the text this test prints into the doc.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from app.testing import NginxTLS, render_nginx_site

DOC: Final = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
#: The deployment the doc describes: two machines, TLS at nginx.
DOC_BACKENDS: Final = (("10.0.0.11", 8000), ("10.0.0.12", 8000))
DOC_TLS: Final = NginxTLS(
    "/etc/letsencrypt/live/chat.example.com/fullchain.pem",
    "/etc/letsencrypt/live/chat.example.com/privkey.pem",
)


def doc_site() -> str:
    """The site config for the doc's deployment, as the renderer makes it."""
    return render_nginx_site(
        DOC_BACKENDS,
        listen="443",
        server_name="chat.example.com",
        tls=DOC_TLS,
        access_log="/var/log/nginx/enclave.access.log",
    )


def shown_site(markdown: str) -> str:
    """The fenced block between the markers (one block, ``nginx``)."""
    match = re.search(
        r"<!-- nginx-site:begin -->\n```nginx\n(.*?)```\n<!-- nginx-site:end -->",
        markdown,
        re.DOTALL,
    )
    assert match is not None, "docs/deploy.md has no nginx-site block between its markers"
    return match.group(1)


def test_shown_site_reads_the_block_between_the_markers() -> None:
    text = "x\n<!-- nginx-site:begin -->\n```nginx\nupstream a {}\n```\n<!-- nginx-site:end -->\n"
    assert shown_site(text) == "upstream a {}\n"


def test_the_doc_shows_the_rendered_site() -> None:
    expected = doc_site()
    assert shown_site(DOC.read_text(encoding="utf-8")) == expected, (
        "docs/deploy.md is out of date; its nginx-site block should read:\n" + expected
    )


def test_the_doc_shows_the_scale_out_flags_without_pending_marks() -> None:
    text = DOC.read_text(encoding="utf-8")
    for flag in ("--workers", "--store redis://"):
        assert flag in text
    assert "pending" not in text.lower()
