"""The mutant catalogue: ``python -m isolation mutants``, proof that both checks can fail."""

# Layout (each module imports only the ones above it):
#
#   _model.py       what a mutant is: Replacement, Mutant, MutantError
#   _catalogue.py   the mutants: exact replacements in files of app/, and the control
#   _runner.py      copies app/, applies one mutant, runs ../static and ../audit on it
#   _report.py      the mutant table: text, Markdown, JSON, the generated doc block
#   _cli.py         the ``mutants`` subcommand

from ._catalogue import CATALOGUE as CATALOGUE
from ._catalogue import CONTROL as CONTROL
from ._model import Mutant as Mutant
from ._model import MutantError as MutantError
from ._model import Replacement as Replacement
from ._runner import MutantOptions as MutantOptions
from ._runner import MutantResult as MutantResult
from ._runner import run_mutants as run_mutants

__all__ = [
    "CATALOGUE",
    "CONTROL",
    "Mutant",
    "MutantError",
    "MutantOptions",
    "MutantResult",
    "Replacement",
    "run_mutants",
]
