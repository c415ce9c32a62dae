"""Markers that tell the static checker which classes are request-scoped."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["REQUEST_SCOPED_ATTR", "request_scoped"]

_T = TypeVar("_T", bound=type)

#: Attribute set on a class decorated with :func:`request_scoped`.
REQUEST_SCOPED_ATTR = "__isolation_request_scoped__"


def request_scoped(cls: _T) -> _T:
    """Mark ``cls`` as living for one request (connection) only.

    The static checker reports any construction of a marked class at import
    time (module or class body level). At runtime the marker only sets
    :data:`REQUEST_SCOPED_ATTR`; it changes no behaviour.
    """
    setattr(cls, REQUEST_SCOPED_ATTR, True)
    return cls
