"""Instructions per turn under callgrind (``python -m bench instructions``).

Layout:

- ``_runner``: the plan, each server under callgrind with and without turns, the CLI and
  the report. The users are :func:`bench.threads.run_turns`'.
"""

from ._runner import (
    DEFAULT_SERVERS,
    NO_VALGRIND,
    InstructionsPlan,
    add_parser,
    callgrind_total,
    main,
    per_turn,
    render_markdown,
    run_instructions,
)

__all__ = [
    "DEFAULT_SERVERS",
    "NO_VALGRIND",
    "InstructionsPlan",
    "add_parser",
    "callgrind_total",
    "main",
    "per_turn",
    "render_markdown",
    "run_instructions",
]
