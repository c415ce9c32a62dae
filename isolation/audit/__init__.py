"""The runtime isolation audit: ``python -m isolation audit --url ws://...``."""

# Layout (each module imports only the ones above it):
#
#   _ledger.py    the per-user frame checker: pure Python, no I/O, no Trio
#   _report.py    the result: counts, violations with evidence, anomalies; text, JSON
#   _checks.py    checks across users and the IDOR helpers: pure functions
#   _plan.py      the configuration, the seeded plan of every user, tokens
#   _link.py      one WebSocket connection of one audited user
#   _board.py     what the users of one audit share
#   _run.py       run_audit(): many concurrent users against a live server
#   _cli.py       the ``audit`` subcommand
#
# The names below are loaded on first use, so that importing ``isolation.audit._ledger``
# (as the asyncio clients of bench/ do) imports neither Trio nor trio-websocket.

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._run import AuditConfig, AuditError, AuditReport, run_audit

__all__ = ["AuditConfig", "AuditError", "AuditReport", "run_audit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _run

        return getattr(_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
