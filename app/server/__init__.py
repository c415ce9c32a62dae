"""The server process: ``serve()`` (the transport, signals, draining), its GC settings and
its log output (``_logging``: text or JSON lines, tokens redacted)."""

from ._logging import configure_logging as configure_logging
from ._serve import RunningServer as RunningServer
from ._serve import serve as serve

__all__ = [
    "RunningServer",
    "configure_logging",
    "serve",
]
