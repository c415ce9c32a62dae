"""``python -m app`` is ``enclave``."""

import sys

from ._cli import main

sys.exit(main())
