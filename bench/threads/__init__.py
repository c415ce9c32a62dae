"""Durable threads under load (``python -m bench resume``), and the users that drive them.

Layout:

- ``_runner``: the plan, one enclave per thread store, the CLI and the report.
- ``_client``: the users: turns in their threads (:func:`run_turns`, which ``bench
  instructions`` drives too), then all reconnect and ``resume``.
"""

from ._client import ResumeResult, TurnsResult, UsersConfig, measure_resume, run_turns
from ._runner import ResumePlan, add_parser, main, render_markdown, run_resume

__all__ = [
    "ResumePlan",
    "ResumeResult",
    "TurnsResult",
    "UsersConfig",
    "add_parser",
    "main",
    "measure_resume",
    "render_markdown",
    "run_resume",
    "run_turns",
]
