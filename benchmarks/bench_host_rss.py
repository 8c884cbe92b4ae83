"""The host's peak memory for 10,000 trivial tests: on sim-jetson against a local run.

Prints figures; not a test.  Run as root on a host where ``hil sim up`` works::

    python3 benchmarks/bench_host_rss.py [--tests 10000] [--runs 2] [--python VENV/bin/python]

Each side is one ``pytest`` process on this host; its peak resident set size
is the kernel's ``ru_maxrss`` of that child (``os.wait4``), so what runs in
the container or on the board is not counted: only what the host keeps while
it replays the streamed reports.  The local side runs the same tests in
process (``--target=cpu``, a local target).  Goal: sim-jetson within 1.3x of local.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchlib import IMAGE_REQUIREMENTS, start  # noqa: E402

#: The interpreter that runs the measured pytest (``--python``, see benchlib.start).
PYTHON = sys.executable
GOAL = 1.3


def make_project(where: Path, tests: int) -> Path:
    """A git checkout with ``tests`` trivial tests and the sim-jetson and cpu targets."""
    root = where / "rss-project"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-jetson.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = root / "targets" / "sim-jetson.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'remote_dir = "hil/pytest-hil"', 'remote_dir = "hil-bench/rss"'), encoding="utf-8")
    (root / "targets" / "cpu.toml").write_text('kind = "local"\ntier = 1\n', encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_many.py").write_text(
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('n', range({tests}))\n"
        "def test_trivial(n):\n    assert n >= 0\n", encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def peak_rss_mb(root: Path, target: str) -> float:
    """Peak RSS (MB) of one ``pytest --target=TARGET -q`` on this host."""
    with open(root / f"out-{target}.txt", "wb") as out:
        proc = subprocess.Popen([PYTHON, "-m", "pytest", f"--target={target}", "-q",
                                 "-p", "no:cacheprovider", "tests"], cwd=root, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        text = (root / f"out-{target}.txt").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"--target={target} failed ({code}):\n{text[-3000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    global PYTHON
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    args, _rig = start(parser)
    PYTHON = args.python
    with tempfile.TemporaryDirectory(prefix="hil-bench-rss-") as tmp:
        root = make_project(Path(tmp), args.tests)
        peak_rss_mb(root, "sim-jetson")  # warm-up: the image and the sync, not measured
        local = min(peak_rss_mb(root, "cpu") for _ in range(args.runs))
        remote = min(peak_rss_mb(root, "sim-jetson") for _ in range(args.runs))
    ratio = remote / local
    print(f"host peak RSS, {args.tests} trivial tests (min of {args.runs} runs)")
    print(f"  {'local (--target=cpu)':<26}{local:8.1f} MB")
    print(f"  {'sim-jetson':<26}{remote:8.1f} MB   {ratio:.2f}x local "
          f"(goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
