"""``python -m app`` is ``enclave``."""

import sys

from .cli._main import main

sys.exit(main())
