"""Static and runtime checks that one user's state cannot reach another's."""

from ._markers import REQUEST_SCOPED_ATTR as REQUEST_SCOPED_ATTR
from ._markers import request_scoped as request_scoped

__all__ = ["REQUEST_SCOPED_ATTR", "request_scoped"]
