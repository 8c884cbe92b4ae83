"""The worker's entry: ``python3 /hil/lib/hil_worker/__main__.py [--probe | PYTEST_ARGS...]``.

Run as a file (as a container does), the folder above this package goes at
the END of the import path, so no project module is shadowed, and the path's
head becomes the working folder, the import path ``python -m pytest`` would
have.  xdist's workers get this path from their controller.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    if not __package__:  # run as a file, not with -m
        here = Path(__file__).resolve().parent
        if sys.path and Path(sys.path[0]).resolve() == here:
            sys.path[0] = os.getcwd()
        if str(here.parent) not in sys.path:
            sys.path.append(str(here.parent))
        main = importlib.import_module(f"{here.name}.main")
    else:
        main = importlib.import_module(".main", __package__)
    main.entry()
