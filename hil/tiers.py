"""The tier vocabulary, as the host imports it: :mod:`hil.worker.tiers` itself.

The vocabulary lives in the worker's package, mounted into every target, and
this name is bound to that very module (not a copy): the skip reasons on a
board and on the laptop are the same strings, loaded one way.
"""

from __future__ import annotations

import sys

from hil.worker import tiers
from hil.worker.tiers import *  # noqa: F403 - the names, for type checkers

sys.modules[__name__] = tiers
