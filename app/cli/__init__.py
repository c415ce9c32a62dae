"""The ``enclave`` command: ``serve``, ``token``, and ``chat`` (a terminal chat client)."""

from ._main import main as main

__all__ = [
    "main",
]
