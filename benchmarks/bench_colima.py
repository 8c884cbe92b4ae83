"""Overhead of the colima target on the simulated rig (prints figures; not a test).

    python3 benchmarks/bench_colima.py [--repeat 5] [--tests 2000]

1. no-change re-run: wall time of ``pytest --target=bench`` minus the
   in-container pytest's own duration (goal: under 1.0 s);
2. the same after editing one test file (no rebuild; goal: under 1.5 s);
3. 2,000 trivial tests through the target vs plain pytest in a plain
   ``docker run`` of the same image (goal: at most 1.10x), three ways: the
   whole command's wall time; the wall time the 2,000 tests add over a 2-test
   run (start-up costs cancel); pytest's own session time in the container.
   Each against plain pytest and against plain pytest with allure-pytest
   active (``--alluredir``), as the target runs it.

Needs the rig up (``hil sim up``).  The project is a temporary copy of this
repository's ``targets/Dockerfile`` and requirements, so the image is the one
``sim-colima`` uses.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import IMAGE_REQUIREMENTS, pytest_seconds, start

from hil.sim import Rig

REPO = Path(__file__).resolve().parents[1]
#: The interpreter that runs the measured pytest (``--python``, see benchlib.start).
PYTHON = sys.executable


def make_project(base: Path, rig: Rig, n_tests: int) -> Path:
    project = base / "bench-project"
    (project / "targets").mkdir(parents=True)
    shutil.copy(REPO / "targets" / "Dockerfile", project / "targets" / "Dockerfile")
    for rel in IMAGE_REQUIREMENTS:
        shutil.copy(REPO / rel, project / rel)
    (project / "targets" / "bench.toml").write_text(
        f'kind = "docker"\ntier = 1\n[docker]\nengine = "{rig.colima_host}"\n'
        f'build_args = {{ BASE_IMAGE = "{rig.base_image}" }}\n'
        'hash_files = ["targets/requirements.txt"]\nbuild_network = "host"\nnetwork = "none"\n')
    (project / "conftest.py").write_text("")
    (project / "small").mkdir()
    (project / "small" / "test_small.py").write_text(
        "def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n")
    (project / "many").mkdir()
    body = "".join(f"def test_{i}():\n    pass\n\n" for i in range(n_tests))
    (project / "many" / "test_many.py").write_text(body)
    return project


def latest_run(project: Path) -> Path:
    return sorted((project / "reports" / "runs").iterdir())[-1]


def inner_duration(run_dir: Path) -> float:
    """The in-container pytest's own session duration, from its sessionfinish event."""
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["ev"] == "sessionfinish":
            return float(event["duration"])
    raise SystemExit(f"no sessionfinish event in {run_dir}")


def timed_output(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    return elapsed, proc.stdout


def timed(cmd: list[str], cwd: Path) -> float:
    return timed_output(cmd, cwd)[0]


def overhead(project: Path, folder: str, edit: bool, repeat: int) -> list[float]:
    cmd = [PYTHON, "-m", "pytest", "--target=bench", "-q", "-p", "no:cacheprovider", folder]
    figures = []
    for i in range(repeat):
        if edit:
            path = project / folder / "test_small.py"
            path.write_text(path.read_text() + f"\n# edit {i} {time.time()}\n")
        wall = timed(cmd, project)
        figures.append(wall - inner_duration(latest_run(project)))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tests", type=int, default=2000)
    args, rig = start(parser)
    global PYTHON
    PYTHON = args.python
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        project = make_project(Path(tmp), rig, args.tests)
        print("warming up (builds the image if needed) ...", flush=True)
        timed([PYTHON, "-m", "pytest", "--target=bench", "-q", "small"], project)

        no_change = overhead(project, "small", edit=False, repeat=args.repeat)
        edited = overhead(project, "small", edit=True, repeat=args.repeat)

        image = subprocess.run(
            [sys.executable, "-c", "from hil.config import load_inventory;from hil.backends.images import recipe;"
             "from pathlib import Path;p=Path('.');print(recipe(load_inventory(p).get('bench'),p).tag)"],
            cwd=project, capture_output=True, text=True, check=True).stdout.strip()
        ours = [PYTHON, "-m", "pytest", "--target=bench", "-q", "-p", "no:cacheprovider"]
        plain = ["docker", "-H", rig.colima_host, "run", "--rm", "--network", "none",
                 "-v", f"{project}:/src:ro", "-w", "/src", image,
                 "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        # The same, with allure-pytest active as the target runs it.
        plain_allure = [*plain, "--alluredir=/tmp/allure"]
        kinds = {"target": ours, "plain": plain, "plain+allure": plain_allure}
        wall: dict[tuple[str, str], list[float]] = {}
        inner: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(max(3, args.repeat // 2)):
            for name, cmd in kinds.items():
                for folder in ("many", "small"):
                    seconds, output = timed_output([*cmd, folder], project)
                    wall.setdefault((name, folder), []).append(seconds)
                    if folder == "many":
                        inner[name].append(inner_duration(latest_run(project)) if name == "target"
                                           else pytest_seconds(output))

    def fmt(values: list[float]) -> str:
        return f"median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"

    def med(name: str, folder: str) -> float:
        return statistics.median(wall[(name, folder)])

    def per_test(name: str) -> float:
        """The wall time the 2,000 tests add over a 2-test run: start-up costs cancel."""
        return med(name, "many") - med(name, "small")

    print()
    print(f"no-change re-run overhead (wall - in-container pytest): {fmt(no_change)}   goal < 1.0 s")
    print(f"after editing one test file (no rebuild):              {fmt(edited)}   goal < 1.5 s")
    print()
    print(f"{args.tests} trivial tests, wall time of the whole command:")
    for name in kinds:
        print(f"  {name:13} {fmt(wall[(name, 'many')])}   (2 tests: {med(name, 'small'):.3f} s)")
    print(f"  ratio target / plain pytest:          {med('target', 'many') / med('plain', 'many'):.3f}x   goal <= 1.10x")
    print(f"  ratio target / plain pytest + allure: {med('target', 'many') / med('plain+allure', 'many'):.3f}x")
    print(f"{args.tests} trivial tests, the time they add over 2 tests (wall; start-up costs cancel):")
    for name in kinds:
        print(f"  {name:13} {per_test(name):.3f} s")
    print(f"  ratio target / plain pytest:          {per_test('target') / per_test('plain'):.3f}x")
    print(f"  ratio target / plain pytest + allure: {per_test('target') / per_test('plain+allure'):.3f}x")
    print(f"{args.tests} trivial tests, pytest's own session time in the container:")
    for name in kinds:
        print(f"  {name:13} {fmt(inner[name])}")
    print(f"  ratio target / plain pytest:          {statistics.median(inner['target']) / statistics.median(inner['plain']):.3f}x")
    print(f"  ratio target / plain pytest + allure: {statistics.median(inner['target']) / statistics.median(inner['plain+allure']):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
