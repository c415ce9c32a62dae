"""The attacks (``python -m bench attacks``): each attack in turn under well-behaved load.

Layout:

- ``_runner``: the plan, one run per transport (baseline, attack and recovery windows),
  the CLI.
- ``_users``: the well-behaved users, in a child process (the ``users`` role).
- ``_attackers``: the attacks, in a child process (the ``attack`` role).
- ``_report``: windows, expectations and the verdict per transport.
"""

from ._runner import AttackPlan, add_parser, main, quick_plan, run_attacks

__all__ = ["AttackPlan", "add_parser", "main", "quick_plan", "run_attacks"]
