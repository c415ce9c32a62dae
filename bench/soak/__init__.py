"""The soak (``python -m bench soak``): hours of traffic in minutes, watching for leaks.

Layout:

- ``_runner``: the plan, the run (server RSS and fds sampled from /proc), the CLI.
- ``_driver``: the soak client, run in a child process (the ``soak`` role).
- ``_report``: the checks, the Markdown and the chart.
"""

from ._runner import SoakPlan, add_parser, main, quick_plan, run_soak, server_options

__all__ = ["SoakPlan", "add_parser", "main", "quick_plan", "run_soak", "server_options"]
