"""``python -m attribution``: the same as the ``attribution`` command."""

import sys

from attribution.cli import main

sys.exit(main())
