"""Durable threads under load (``python -m bench resume``).

Layout:

- ``_runner``: the plan, one enclave per thread store, the CLI and the report.
- ``_client``: the users: turns in their threads, then all reconnect and ``resume``.
"""

from ._client import ResumeConfig, ResumeResult, measure_resume
from ._runner import ResumePlan, add_parser, main, render_markdown, run_resume

__all__ = [
    "ResumeConfig",
    "ResumePlan",
    "ResumeResult",
    "add_parser",
    "main",
    "measure_resume",
    "render_markdown",
    "run_resume",
]
