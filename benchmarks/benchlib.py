"""What the benchmarks share: their command line, the rig, pytest's reported duration."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The dependencies image's requirement locks (what targets/Dockerfile COPYs).
IMAGE_REQUIREMENTS = ("targets/requirements.txt", "targets/requirements-cpu.txt",
                      "targets/requirements-jetson.txt")
if str(REPO) not in sys.path:  # run as ``python3 benchmarks/bench_*.py`` from a checkout
    sys.path.insert(0, str(REPO))

from hil.sim import Rig  # noqa: E402

_DURATION = re.compile(r" in (\d+(?:\.\d+)?)s")


def pytest_seconds(text: str) -> float:
    """The duration on pytest's last summary line (``2000 passed in 1.23s``)."""
    found = _DURATION.findall(text)
    if not found:
        raise RuntimeError(f"no pytest duration in:\n{text[-2000:]}")
    return float(found[-1])


def start(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Rig]:
    """Add ``--python``, parse the command line and bring the rig up."""
    parser.add_argument(
        "--python", default=sys.executable,
        help="interpreter of the measured pytest runs (default: this one); e.g. a venv "
             "holding only pytest-hil, so plugins installed here for other work, such as "
             "hypothesis at 0.7 s of import on our 2-core host, are not counted")
    args = parser.parse_args()
    rig = Rig()
    rig.ensure_up()
    return args, rig
