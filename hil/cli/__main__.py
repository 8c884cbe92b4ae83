"""``python -m hil.cli``: the ``hil`` console script."""

import sys

from hil.cli import main

sys.exit(main())
