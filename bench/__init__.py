"""The concurrent-user benchmark of trio-enclave, side by side with peer servers.

``python -m bench run`` measures every server at several user counts (interleaved
rounds, medians); ``python -m bench capacity`` holds N idle authenticated
connections. See docs/benchmarks.md.
"""

from ._load import LoadConfig as LoadConfig
from ._load import LoadGenerator as LoadGenerator
from ._load import run_load as run_load
from ._results import LoadResult as LoadResult
from ._results import Measurement as Measurement

__all__ = ["LoadConfig", "LoadGenerator", "LoadResult", "Measurement", "run_load"]
