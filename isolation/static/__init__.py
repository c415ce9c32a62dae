"""The static isolation checker: ``python -m isolation check PATH ...``."""

# Layout (each module imports only the ones above it):
#
#   _model.py     finding codes (CODES) and the Finding value
#   _names.py     name resolution and value classification on one parsed file
#   _module.py    import-time checks: ISO101, ISO103, ISO107, ISO109
#   _checks.py    scope-aware checks: ISO102, ISO104-ISO106, ISO108, ISO109
#   _checker.py   reading files, pragmas, sorting: check_source, check_paths
#
# The checker parses files with ast and never imports them; it needs attrs only.

from ._checker import CODES as CODES
from ._checker import Finding as Finding
from ._checker import check_paths as check_paths
from ._checker import check_source as check_source
from ._checker import python_files as python_files

__all__ = ["CODES", "Finding", "check_paths", "check_source", "python_files"]
