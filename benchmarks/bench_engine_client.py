"""Does the lean Engine API client earn its lines? (prints figures; not a test)

    python3 benchmarks/bench_engine_client.py [--repeat 7]

The colima target's per-run Engine API calls (ping, inspect, create, attach,
start, wait, remove) go through :class:`hil.backends.engine.SocketEngine`, a
client of its own over the engine's unix socket, instead of the Docker SDK
(``docker``), which the same module uses for builds and TCP/SSH engines.  This
measures what that choice buys: the no-change re-run overhead of
``pytest --target=bench`` (wall time minus the in-container pytest's own
duration) with the lean client and with the SDK forced for every call
(:class:`hil.backends.engine.SdkEngine`), alternating, median of ``--repeat``,
plus the import time of each client in a fresh interpreter.  The colima
goal is an overhead under 1.0 s.
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

#: Runs pytest with the Docker SDK client for every engine call of the colima target.
FORCE_SDK = ("import sys, hil.backends.docker as d, hil.backends.engine as e; "
             "d.open_engine = lambda url, timeout: e.SdkEngine(url, timeout); "
             "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


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
        commands = {"lean client": [args.python, "-m", "pytest", *tail],
                    "Docker SDK": [args.python, "-c", FORCE_SDK, *tail]}
        print("warming up (builds the image if needed) ...", flush=True)
        for cmd in commands.values():
            subprocess.run(cmd, cwd=project, capture_output=True, check=True)
        figures: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():  # alternating, so drift hits both alike
                began = time.perf_counter()
                subprocess.run(cmd, cwd=project, capture_output=True, check=True)
                figures[name].append(time.perf_counter() - began - inner_duration(latest_run(project)))
    for name, values in figures.items():
        print(f"no-change re-run overhead, {name:11}: median {statistics.median(values):.3f} s "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    lean = statistics.median(figures["lean client"])
    sdk = statistics.median(figures["Docker SDK"])
    print(f"the SDK costs {sdk - lean:+.3f} s per run ({(sdk / lean - 1) * 100:+.0f}%); goal < 1.0 s")
    for module in ("hil.backends.engine", "docker"):
        print(f"import {module}: median {import_ms(args.python, module, 5):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
