"""The concurrent-user benchmark of trio-enclave, side by side with peer servers.

``python -m bench run`` measures every server at several user counts (interleaved
rounds, medians); ``python -m bench capacity`` holds N idle authenticated
connections; ``soak`` and ``attacks`` look for leaks and for harm under attack;
``resume`` times resumes; ``instructions`` counts a turn's instructions under callgrind.
See docs/benchmarks.md.

Layout, one layer a folder:

- ``load/``: the load run and the capacity run.
- ``soak/``: the soak.
- ``attacks/``: the attacks under load.
- ``threads/``: the resume benchmark and its users (one thread each).
- ``instructions/``: instructions per turn under callgrind.
- ``harness/``: what the three share (server processes, the child-process protocol,
  the fast WebSocket client, /proc, statistics, verdicts, the isolation glue).
- ``peers/``: the peer servers.
- ``_cli``: ``python -m bench`` (``__main__``).
"""

from .load import LoadConfig, LoadGenerator, LoadResult, Measurement, run_load

__all__ = ["LoadConfig", "LoadGenerator", "LoadResult", "Measurement", "run_load"]
