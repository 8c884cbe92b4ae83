"""No-change re-run overhead on sim-jetson: pytest-hil against shell glue over OpenSSH.

Prints figures; not a test.  Run as root on a host where ``hil sim up`` works::

    python3 benchmarks/bench_jetson.py [--runs 5] [--python VENV/bin/python]

Overhead = wall time of the whole command minus the in-container pytest's own
duration (the "in N.NNs" of its summary line: ``pytest.log`` for pytest-hil,
the command's output for the scripts).  Every side runs the same tests in the
same image content on the same board; nothing changed since the previous run
(the image is present, the tree synced).  Measured on the bare rig link, then
with 20 ms of delay each way (``Rig.netem``), runs of the sides interleaved.

The baseline is what a careful team scripts: rsync, ``docker build`` (fully
cached) and ``docker run --rm --runtime nvidia``, all three over one OpenSSH
connection shared through a control socket (``ControlMaster=auto``,
``ControlPersist``), which the warm-up run opens and every measured run
reuses.  The same three steps with a new ``ssh`` each are shown too.
pytest-hil opens its connection afresh in every session, in the background
from configure time on.
"""

from __future__ import annotations

import argparse
import shlex
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

from hil.sim import Rig  # noqa: E402

TESTS = {
    "tests/test_math.py": "def test_add():\n    assert 1 + 1 == 2\n\n\n"
                          "def test_mul():\n    assert 2 * 3 == 6\n",
    "tests/test_text.py": "import pytest\n\n\n@pytest.mark.parametrize('n', range(5))\n"
                          "def test_upper(n):\n    assert 'ab'.upper() == 'AB'\n",
}
#: The interpreter that runs the measured pytest (``--python``, see benchlib.start).
PYTHON = sys.executable
OURS, SHARED, PLAIN = "pytest-hil", "script, ControlMaster", "script, ssh per step"


def make_project(where: Path) -> Path:
    """A small git checkout using the repo's Dockerfile (so the image is shared)."""
    root = where / "bench-project"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-jetson.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = root / "targets" / "sim-jetson.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'remote_dir = "hil/pytest-hil"', 'remote_dir = "hil-bench/ours"'), encoding="utf-8")
    for rel, text in TESTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def run_ours(root: Path) -> tuple[float, float]:
    """(wall, in-container pytest) of ``pytest --target=sim-jetson``."""
    start = time.monotonic()
    res = subprocess.run([PYTHON, "-m", "pytest", "--target=sim-jetson", "-q",
                          "-p", "no:cacheprovider", "tests"], cwd=root, capture_output=True,
                         text=True, check=False)
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"pytest-hil run failed ({res.returncode}):\n{res.stdout[-3000:]}")
    run = sorted((root / "reports" / "runs").iterdir())[-1]
    return wall, pytest_seconds((run / "pytest.log").read_text(encoding="utf-8"))


def ssh_command(rig: Rig, control: Path | None) -> list[str]:
    """``ssh -F CONFIG``, sharing one connection through ``control``'s socket when given."""
    cmd = ["ssh", "-F", str(rig.ssh_config)]
    if control is not None:
        cmd += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C",
                "-o", "ControlPersist=600"]
    return cmd


def run_script(root: Path, rig: Rig, control: Path | None) -> tuple[float, float]:
    """(wall, in-container pytest) of the rsync + docker build + docker run glue."""
    ssh = ssh_command(rig, control)
    host = rig.ssh_alias
    remote = "hil-bench/script"
    base = "hil-sim/l4t-base:r36.4.3"
    steps = [
        ["rsync", "-az", "--delete", "--exclude=reports/", "--exclude=.git/",
         "-e", shlex.join(ssh), f"{root}/", f"{host}:{remote}/"],
        [*ssh, host,
         f"cd {remote} && docker build -q -t hil-bench-script:latest -f targets/Dockerfile "
         f"--build-arg BASE_IMAGE={base} --network host ."],
        [*ssh, host,
         f"docker run --rm --runtime nvidia --network none -v $HOME/{remote}:/src:ro -w /src "
         f"-e PYTHONDONTWRITEBYTECODE=1 hil-bench-script:latest "
         f"python3 -m pytest -q -p no:cacheprovider tests"],
    ]
    start = time.monotonic()
    out = ""
    for step in steps:
        res = subprocess.run(step, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"script step failed: {shlex.join(step)}\n{res.stdout}{res.stderr}")
        out = res.stdout
    return time.monotonic() - start, pytest_seconds(out)


def measure(root: Path, rig: Rig, runs: int) -> dict[str, list[float]]:
    """Overheads (seconds) of every side, interleaved, after one warm-up run each."""
    with tempfile.TemporaryDirectory(prefix="hil-cm-") as control:
        sides = {
            OURS: lambda: run_ours(root),
            SHARED: lambda: run_script(root, rig, Path(control)),
            PLAIN: lambda: run_script(root, rig, None),
        }
        try:
            for side in sides.values():
                side()  # warm-up; the ControlMaster's connection opens here
            got: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(runs):
                for name, side in sides.items():
                    wall, inner = side()
                    got[name].append(wall - inner)
        finally:
            subprocess.run([*ssh_command(rig, Path(control)), "-O", "exit", rig.ssh_alias],
                           capture_output=True, check=False)
    return got


def show(label: str, got: dict[str, list[float]]) -> tuple[float, float]:
    """Print one condition's figures; returns (ours, ControlMaster script) medians."""
    ours = statistics.median(got[OURS])
    shared = statistics.median(got[SHARED])
    print(f"{label}:")
    for name, values in got.items():
        print(f"  {name:<21} median {statistics.median(values):5.2f} s   "
              f"min {min(values):5.2f}  max {max(values):5.2f}  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    return ours, shared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="netem delay each way")
    args, rig = start(parser)
    global PYTHON
    PYTHON = args.python
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        root = make_project(Path(tmp))
        bare = show("bare rig link", measure(root, rig, args.runs))
        with rig.netem(delay_ms=args.delay_ms) as via:
            delayed = show(f"{args.delay_ms:.0f} ms each way ({via})",
                           measure(root, rig, args.runs))
    print("goal: hot re-run overhead at or below the ControlMaster script's")
    for label, (ours, shared) in (("bare link", bare), ("delayed", delayed)):
        print(f"  {label:<10} pytest-hil {ours:.2f} s, script {shared:.2f} s: "
              f"{'met' if ours <= shared else 'MISSED'} ({ours - shared:+.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
