"""Static and runtime checks that one user's state cannot reach another's."""

# Layout (each folder is one layer; its modules are private, its __init__ re-exports):
#
#   _markers.py   @request_scoped: the only name the server imports (stdlib only)
#   static/       the AST checker behind ``python -m isolation check``
#   audit/        the runtime audit behind ``python -m isolation audit`` (with the ledger)
#   mutants/      the mutant catalogue behind ``python -m isolation mutants``
#   _cli.py       ``python -m isolation COMMAND ...``; __main__.py runs it
#
# Importing this package loads _markers and static/ only: audit/ and mutants/ need Trio
# and are imported by the command line, never by ``from isolation import request_scoped``.

from ._markers import REQUEST_SCOPED_ATTR as REQUEST_SCOPED_ATTR
from ._markers import request_scoped as request_scoped
from .static import CODES as CODES
from .static import Finding as Finding
from .static import check_paths as check_paths
from .static import check_source as check_source

__all__ = [
    "CODES",
    "REQUEST_SCOPED_ATTR",
    "Finding",
    "check_paths",
    "check_source",
    "request_scoped",
]
