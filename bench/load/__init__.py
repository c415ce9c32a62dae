"""The concurrent-user load run (``python -m bench run``) and the capacity run
(``python -m bench capacity``).

Layout:

- ``_runner``: every server at every user count, interleaved, in rounds.
- ``_capacity``: N idle authenticated connections held with keepalive.
- ``_pool``: the harness's side of the load-generator processes.
- ``_generator``: the load generator itself (simulated users, one connection each).
- ``_results``: what a load generator and a measurement saw, as JSON-able values.
- ``_report``, ``_charts``: the Markdown tables, the targets and the charts.
"""

from ._capacity import CapacityPlan, run_capacity
from ._generator import LoadConfig, LoadGenerator, SimUser, run_load
from ._results import LoadResult, Measurement
from ._runner import Plan, run_benchmark

__all__ = [
    "CapacityPlan",
    "LoadConfig",
    "LoadGenerator",
    "LoadResult",
    "Measurement",
    "Plan",
    "SimUser",
    "run_benchmark",
    "run_capacity",
    "run_load",
]
