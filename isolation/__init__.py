"""Static and runtime checks that one user's state cannot reach another's."""

from ._markers import REQUEST_SCOPED_ATTR as REQUEST_SCOPED_ATTR
from ._markers import request_scoped as request_scoped
from ._static import CODES as CODES
from ._static import Finding as Finding
from ._static import check_paths as check_paths
from ._static import check_source as check_source

__all__ = [
    "CODES",
    "REQUEST_SCOPED_ATTR",
    "Finding",
    "check_paths",
    "check_source",
    "request_scoped",
]
