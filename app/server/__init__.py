"""The server process: ``serve()`` (the transport, signals, draining), its GC settings,
its log output (``_logging``: text or JSON lines, tokens redacted) and the supervisor of
``enclave serve --workers N`` (``_workers``: N server processes on one port)."""

from ._logging import configure_logging as configure_logging
from ._serve import RunningServer as RunningServer
from ._serve import serve as serve
from ._workers import WORKER_INDEX_ENV as WORKER_INDEX_ENV
from ._workers import Backoff as Backoff
from ._workers import WorkerRole as WorkerRole
from ._workers import supervise as supervise

__all__ = [
    "WORKER_INDEX_ENV",
    "Backoff",
    "RunningServer",
    "WorkerRole",
    "configure_logging",
    "serve",
    "supervise",
]
