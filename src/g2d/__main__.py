"""``python -m g2d``: the ``g2d`` command."""

import sys

from g2d.cli import main

sys.exit(main())
