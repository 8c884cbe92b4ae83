"""The colima target's Engine API client: what the Docker SDK costs per run (prints figures).

    python3 benchmarks/bench_engine_client.py [--repeat 7]

The per-run Engine API calls (ping, inspect, create, attach, start, wait,
remove) go through the Docker SDK (:class:`hil.backends.engine.Engine`).
A lean client of our own over the engine's unix socket used to make them; on
the rig, at commit 3e9ebce (where both existed, alternating, n=7), the no-change
re-run overhead was 0.675 s with the lean client and 0.823 s with the SDK
(+0.148 s, the SDK's 148 ms import), both under the colima goal of 1.0 s, so
the lean client (about 200 lines beside the SDK's) was removed.  This prints
the overhead as it is now and the SDK's import time, to keep that decision
checked.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_colima import inner_duration, latest_run, make_project
from benchlib import start


def import_ms(python: str, module: str, repeat: int) -> float:
    """Median import time of ``module`` in a fresh interpreter (``-X importtime``), in ms."""
    figures = []
    for _ in range(repeat):
        err = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"],
                             capture_output=True, text=True, check=True).stderr
        figures.append(int(err.strip().splitlines()[-1].split("|")[1]) / 1000)
    return statistics.median(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args, rig = start(parser)
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as tmp:
        project = make_project(Path(tmp), rig, 2)
        tail = ["--target=bench", "-q", "-p", "no:cacheprovider", "small"]
        commands = {"Docker SDK": [args.python, "-m", "pytest", *tail]}
        print("warming up (builds the image if needed) ...", flush=True)
        for cmd in commands.values():
            subprocess.run(cmd, cwd=project, capture_output=True, check=True)
        figures: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                began = time.perf_counter()
                subprocess.run(cmd, cwd=project, capture_output=True, check=True)
                figures[name].append(time.perf_counter() - began - inner_duration(latest_run(project)))
    for name, values in figures.items():
        print(f"no-change re-run overhead, {name:11}: median {statistics.median(values):.3f} s "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    print("goal < 1.0 s")
    for module in ("docker",):
        print(f"import {module}: median {import_ms(args.python, module, 5):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
