"""The chat page served at ``/``, and the tokens its dev-mode button asks for.

- ``_static``: the page's files (``static/``: HTML, JavaScript, CSS; no build step),
  read from the package once per server by :func:`load_static`.
- ``_dev_token``: :class:`TokenMinter`, which signs tokens with the server's own key
  (``POST /dev/token`` with ``--dev``, and ``enclave token``).
"""

from ._dev_token import DEV_TOKEN_TTL_S as DEV_TOKEN_TTL_S
from ._dev_token import TokenMinter as TokenMinter
from ._static import StaticFile as StaticFile
from ._static import StaticFiles as StaticFiles
from ._static import load_static as load_static

__all__ = ["DEV_TOKEN_TTL_S", "StaticFile", "StaticFiles", "TokenMinter", "load_static"]
