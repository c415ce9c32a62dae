"""Which cores the server and the clients run on: the server alone on one core."""

from __future__ import annotations

import os

import attrs

__all__ = ["Topology", "topology"]


@attrs.frozen
class Topology:
    """Which cores the server and the clients run on."""

    server_cores: tuple[int, ...] | None
    client_cores: tuple[int, ...] | None
    note: str
    #: Every core the run may use: where a server of several workers runs (None: unpinned).
    all_cores: tuple[int, ...] | None = None

    @property
    def client_core_count(self) -> int:
        return len(self.client_cores) if self.client_cores else max(1, os.cpu_count() or 1)


def topology(server_core: int | None = 0) -> Topology:
    """Server on ``server_core``, clients on every other allowed core."""
    allowed = sorted(os.sched_getaffinity(0))
    if server_core is None or len(allowed) < 2 or server_core not in allowed:
        return Topology(None, None, f"not pinned ({len(allowed)} core(s) available)")
    clients = tuple(c for c in allowed if c != server_core)
    return Topology(
        (server_core,),
        clients,
        f"server on core {server_core}, clients on core(s) {','.join(map(str, clients))}",
        tuple(allowed),
    )
