"""Board pools on the rig: 120 tests of 0.5 s on one board vs the pool of three, and -n 2.

Prints figures; not a test.  Run as root on a host where ``hil sim up`` works::

    python3 benchmarks/bench_pool.py [--runs 1] [--tests 120] [--python VENV/bin/python]

Forms, each the wall time of the whole ``pytest`` command (preflight, sync
check, image check, containers, tests, results):

* ``1 board``: a one-board target on ``hil-sim-jetson-1`` (``[ssh] host``),
  today's path;
* ``pool of 3``: ``targets/sim-pool.toml`` (``[ssh] hosts``: boards 1..3),
  each board running its third of the suite in its own container;
* each with ``-n 2`` on top (xdist in each board's container).

A warm-up run per target builds the image and syncs the tree on every board
and records the durations the pool splits by; the measured runs change
nothing.  The goal is a speed-up of 2.7x or more of the pool over one board.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import IMAGE_REQUIREMENTS, start  # noqa: E402

PYTHON = sys.executable
FORMS = (("1 board", "one", ()), ("pool of 3", "sim-pool", ()),
         ("1 board, -n 2", "one", ("-n", "2")), ("pool of 3, -n 2", "sim-pool", ("-n", "2")))


def make_project(where: Path, tests: int) -> Path:
    """A git checkout with the image recipe, the pool target and a one-board target."""
    root = where / "bench-pool"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    pool = (REPO / "targets" / "sim-pool.toml").read_text(encoding="utf-8")
    pool = re.sub(r'(?m)^remote_dir = .*$', 'remote_dir = "hil-bench/pool"', pool)
    (root / "targets" / "sim-pool.toml").write_text(pool, encoding="utf-8")
    one = re.sub(r'(?m)^hosts = .*$', 'host = "hil-sim-jetson-1"', pool)
    one = re.sub(r'(?m)^name = .*$', 'name = "one"', one)
    (root / "targets" / "one.toml").write_text(one, encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_sleep.py").write_text(
        "import time\n\nimport pytest\n\n\n"
        f"@pytest.mark.parametrize('i', range({tests}))\n"
        "def test_sleeps(i):\n    time.sleep(0.5)\n", encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def run(root: Path, target: str, extra: tuple[str, ...], tests: int) -> float:
    """Wall seconds of one ``pytest --target=TARGET`` run."""
    began = time.monotonic()
    res = subprocess.run([PYTHON, "-m", "pytest", f"--target={target}", "-q", *extra, "tests"],
                         cwd=root, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    if res.returncode != 0 or f"{tests} passed" not in res.stdout:
        raise RuntimeError(f"run {target} {extra} failed ({res.returncode}):\n{res.stdout[-3000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="measured runs per form (default 1)")
    parser.add_argument("--tests", type=int, default=120, help="tests of 0.5 s (default 120)")
    args, rig = start(parser)
    rig.up(boards=max(3, rig.pool.size()))
    global PYTHON
    PYTHON = args.python
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        root = make_project(Path(tmp), args.tests)
        for target in ("one", "sim-pool"):
            run(root, target, (), args.tests)  # warm-up: images, sync, durations
        got: dict[str, list[float]] = {label: [] for label, _, _ in FORMS}
        for _ in range(args.runs):
            for label, target, extra in FORMS:
                got[label].append(run(root, target, extra, args.tests))
    print(f"{args.tests} tests of 0.5 s (serial sleep {args.tests * 0.5:.0f} s), "
          f"{args.runs} run(s) each, wall time of the whole pytest command:")
    med = {label: statistics.median(values) for label, values in got.items()}
    for label, values in got.items():
        print(f"  {label:<16} {med[label]:6.2f} s  (min {min(values):.2f}, max {max(values):.2f})"
              f"  speed-up vs 1 board: {med['1 board'] / med[label]:.2f}x")
    print(f"  pool of 3 vs 1 board: {med['1 board'] / med['pool of 3']:.2f}x (goal >= 2.7x); "
          f"with -n 2: {med['1 board, -n 2'] / med['pool of 3, -n 2']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
