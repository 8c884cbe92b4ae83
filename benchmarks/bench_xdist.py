"""pytest-xdist on sim-jetson: wall time of 40 tests of 0.5 s each, without -n, -n 1 and -n 4.

Prints figures; not a test.  Run as root on a host where ``hil sim up`` works::

    python3 benchmarks/bench_xdist.py [--runs 3] [--tests 40] [--python VENV/bin/python]

Each figure is the wall time of the whole ``pytest --target=sim-jetson``
command (preflight, sync check, container, tests, results), and beside it the
in-container pytest's own duration (the "in N.NNs" of ``pytest.log``).
``-n 4`` runs xdist's controller in the board's container with four workers
there; the local session only relays their reports.  One warm-up run builds
the image and syncs the tree; the measured runs change nothing, interleaved.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import IMAGE_REQUIREMENTS, pytest_seconds, start  # noqa: E402

#: The interpreter that runs the measured pytest (``--python``, see benchlib.start).
PYTHON = sys.executable
#: The command-line forms compared (label, extra pytest arguments).
FORMS = (("no -n", ()), ("-n 1", ("-n", "1")), ("-n 4", ("-n", "4")))


def make_project(where: Path, tests: int) -> Path:
    """A git checkout with the repo's Dockerfile, locks and sim-jetson target; ``tests`` sleepers."""
    root = where / "bench-xdist"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-jetson.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = root / "targets" / "sim-jetson.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'remote_dir = "hil/pytest-hil"', 'remote_dir = "hil-bench/xdist"'), encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_sleep.py").write_text(
        "import time\n\nimport pytest\n\n\n"
        f"@pytest.mark.parametrize('i', range({tests}))\n"
        "def test_sleeps(i):\n    time.sleep(0.5)\n", encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def run(root: Path, extra: tuple[str, ...], tests: int) -> tuple[float, float]:
    """(wall, in-container pytest) seconds of one ``pytest --target=sim-jetson`` run."""
    began = time.monotonic()
    res = subprocess.run([PYTHON, "-m", "pytest", "--target=sim-jetson", "-q",
                          "-p", "no:cacheprovider", *extra, "tests"], cwd=root,
                         capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    if res.returncode != 0 or f"{tests} passed" not in res.stdout:
        raise RuntimeError(f"run {extra} failed ({res.returncode}):\n{res.stdout[-3000:]}")
    folder = sorted((root / "reports" / "runs").iterdir())[-1]
    return wall, pytest_seconds((folder / "pytest.log").read_text(encoding="utf-8"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per form (default 3)")
    parser.add_argument("--tests", type=int, default=40, help="tests of 0.5 s (default 40)")
    args, _rig = start(parser)
    global PYTHON
    PYTHON = args.python
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        root = make_project(Path(tmp), args.tests)
        run(root, (), args.tests)  # warm-up: image, sync, connection
        got: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in FORMS}
        for _ in range(args.runs):
            for label, extra in FORMS:
                got[label].append(run(root, extra, args.tests))
    print(f"sim-jetson, {args.tests} tests of 0.5 s, {args.runs} run(s) each "
          f"(serial sleep: {args.tests * 0.5:.1f} s):")
    for label, values in got.items():
        walls = [w for w, _ in values]
        inner = [i for _, i in values]
        print(f"  {label:<6} wall median {statistics.median(walls):6.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}); in-container pytest "
              f"{statistics.median(inner):.2f} s")
    serial = statistics.median(w for w, _ in got["-n 1"])
    four = statistics.median(w for w, _ in got["-n 4"])
    print(f"  -n 1 / -n 4 wall: {serial / four:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
