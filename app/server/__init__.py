"""The server process: ``serve()`` (the transport, signals, draining) and its GC settings."""

from ._serve import RunningServer as RunningServer
from ._serve import serve as serve

__all__ = [
    "RunningServer",
    "serve",
]
