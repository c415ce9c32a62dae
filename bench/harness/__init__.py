"""What the load run, the soak and the attacks share: the harness under all three.

Layout (each module small and private; the names below are the layer's API):

- ``_servers``: the servers under test (enclave and the peers) and how to start one.
- ``_spawn``: child processes, pinned, with a raised fd limit, always killed.
- ``_cores``: which cores the server and the clients run on.
- ``_procfs``: reading /proc (CPU time, RSS, fds, limits, per-core load, the machine,
  a supervisor's process tree).
- ``_redis``: the run's private redis-server and its cost per turn (commandstats, MONITOR).
- ``_child``: the JSON-lines child-process protocol (``python -m bench child``).
- ``_client``: the fast WebSocket client every load runs on.
- ``_isolation``: glue from the clients' frames to the isolation ledgers.
- ``_stats``, ``_verdict``: latency summaries and whether a measurement is valid.
- ``_command``, ``_progress``: results folders, plan overrides, the status line.
"""

from ._child import Child, ChildError, Commands, emit
from ._client import FastClient
from ._command import override, results_dir, run_checked
from ._cores import Topology, topology
from ._isolation import IsolationCheck, UserCheck, user_name
from ._procfs import (
    CoreTimes,
    ProcSample,
    core_load,
    machine_info,
    read_cores,
    read_fds,
    read_nofile,
    read_rss_kib,
    read_sample,
    read_tree,
    read_worker_index,
    sum_samples,
)
from ._progress import Progress
from ._servers import (
    ORDER,
    SERVERS,
    STORES,
    RunningServer,
    ServerOptions,
    ServerSpec,
    ServerUnavailable,
    parse_servers,
    start_server,
    with_stores,
    with_workers,
)
from ._spawn import ProcessSet, python_argv, raise_nofile, sigterm_as_interrupt
from ._stats import LatencySummary, median, summarize
from ._verdict import OK, verdict

__all__ = [
    "OK",
    "ORDER",
    "SERVERS",
    "STORES",
    "Child",
    "ChildError",
    "Commands",
    "CoreTimes",
    "FastClient",
    "IsolationCheck",
    "LatencySummary",
    "ProcSample",
    "ProcessSet",
    "Progress",
    "RunningServer",
    "ServerOptions",
    "ServerSpec",
    "ServerUnavailable",
    "Topology",
    "UserCheck",
    "core_load",
    "emit",
    "machine_info",
    "median",
    "override",
    "parse_servers",
    "python_argv",
    "raise_nofile",
    "read_cores",
    "read_fds",
    "read_nofile",
    "read_rss_kib",
    "read_sample",
    "read_tree",
    "read_worker_index",
    "results_dir",
    "run_checked",
    "sigterm_as_interrupt",
    "start_server",
    "sum_samples",
    "summarize",
    "topology",
    "user_name",
    "verdict",
    "with_stores",
    "with_workers",
]
