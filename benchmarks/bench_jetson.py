"""No-change re-run overhead on sim-jetson: pytest-hil against the usual shell glue.

Prints figures; not a test.  Run as root on a host where ``hil sim up`` works::

    python3 benchmarks/bench_jetson.py [--runs 5] [--python VENV/bin/python]

Overhead = wall time of the whole command minus the in-container pytest's own
duration (the "in N.NNs" of its summary line: ``pytest.log`` for pytest-hil,
the command's output for the script).  Both sides run the same tests in the
same image content on the same board; nothing changed since the previous run
(the image is present, the tree synced).  Measured on the bare rig link, then
with 20 ms of delay each way (``Rig.set_netem(delay_ms=20)``), runs of the two
sides interleaved.

pytest-hil's runs reuse the SSH connection its keeper holds between sessions
(``ssh.persist``); a session that has to connect afresh is measured too and
printed as "(new conn)".

The script is what teams run today: rsync over a new ssh, ``ssh board docker
build`` (a fully cached build), ``ssh board docker run --rm --runtime nvidia``.
"""

from __future__ import annotations

import argparse
import os
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
from hil.sshmux import stop_all  # noqa: E402

TESTS = {
    "tests/test_math.py": "def test_add():\n    assert 1 + 1 == 2\n\n\n"
                          "def test_mul():\n    assert 2 * 3 == 6\n",
    "tests/test_text.py": "import pytest\n\n\n@pytest.mark.parametrize('n', range(5))\n"
                          "def test_upper(n):\n    assert 'ab'.upper() == 'AB'\n",
}
#: The interpreter that runs the measured pytest (``--python``, see benchlib.start).
PYTHON = sys.executable


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


def run_ours(root: Path, control: Path) -> tuple[float, float]:
    """(wall, in-container pytest) of ``pytest --target=sim-jetson``.

    ``control`` is the folder of the SSH connection keepers: the one of the
    previous run (the connection is kept, as between a user's runs), or an
    empty one (the session connects afresh, as the first after ``ssh.persist``).
    """
    env = {**os.environ, "HIL_SSH_CONTROL_DIR": str(control)}
    start = time.monotonic()
    res = subprocess.run([PYTHON, "-m", "pytest", "--target=sim-jetson", "-q",
                          "-p", "no:cacheprovider", "tests"], cwd=root, capture_output=True,
                         text=True, check=False, env=env)
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"pytest-hil run failed ({res.returncode}):\n{res.stdout[-3000:]}")
    run = sorted((root / "reports" / "runs").iterdir())[-1]
    return wall, pytest_seconds((run / "pytest.log").read_text(encoding="utf-8"))


def run_script(root: Path, rig: Rig) -> tuple[float, float]:
    """(wall, in-container pytest) of the rsync + ssh docker build + ssh docker run glue."""
    cfg = str(rig.ssh_config)
    host = rig.ssh_alias
    ssh = f"ssh -F {shlex.quote(cfg)}"
    remote = "hil-bench/script"
    base = "hil-sim/l4t-base:r36.4.3"
    steps = [
        ["rsync", "-az", "--delete", "--exclude=reports/", "--exclude=.git/", "-e", ssh,
         f"{root}/", f"{host}:{remote}/"],
        ["ssh", "-F", cfg, host,
         f"cd {remote} && docker build -q -t hil-bench-script:latest -f targets/Dockerfile "
         f"--build-arg BASE_IMAGE={base} --network host ."],
        ["ssh", "-F", cfg, host,
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
    """Overheads (seconds) of both sides, interleaved, after one warm-up run each.

    "pytest-hil" re-runs over the kept connection; "(new conn)" is a session
    that finds no kept connection and starts one (shown, not in the ratio).
    """
    with tempfile.TemporaryDirectory(prefix="hil-keep-") as kept:
        os.chmod(kept, 0o700)
        run_ours(root, Path(kept))
        run_script(root, rig)
        got: dict[str, list[float]] = {"pytest-hil": [], "script": [], "(new conn)": []}
        for _ in range(runs):
            wall, inner = run_ours(root, Path(kept))
            got["pytest-hil"].append(wall - inner)
            wall, inner = run_script(root, rig)
            got["script"].append(wall - inner)
            with tempfile.TemporaryDirectory(prefix="hil-fresh-") as fresh:
                os.chmod(fresh, 0o700)
                wall, inner = run_ours(root, Path(fresh))
                got["(new conn)"].append(wall - inner)
                stop_all(Path(fresh))
        stop_all(Path(kept))
    return got


def show(label: str, got: dict[str, list[float]]) -> tuple[float, float]:
    """Print one condition's figures; returns (ours, script) medians."""
    ours = statistics.median(got["pytest-hil"])
    script = statistics.median(got["script"])
    print(f"{label}:")
    for name, values in got.items():
        print(f"  {name:<11} median {statistics.median(values):6.2f} s   "
              f"min {min(values):5.2f}  max {max(values):5.2f}  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  ratio script/pytest-hil: {script / ours:.2f}x")
    return ours, script


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
    print("goals:")
    print(f"  bare link under 1.5 s:            {bare[0]:.2f} s  "
          f"{'met' if bare[0] < 1.5 else 'MISSED'}")
    print(f"  delayed: script >= 2x ours:       {delayed[1] / delayed[0]:.2f}x  "
          f"{'met' if delayed[1] >= 2 * delayed[0] else 'MISSED'}")
    print(f"  never worse than the script:      "
          f"{'met' if bare[0] <= bare[1] and delayed[0] <= delayed[1] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
