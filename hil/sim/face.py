"""The Jetson face of the simulated board: ``/etc/nv_tegra_release`` and ``tegrastats``.

On the board they appear only inside sshd's private mount namespace (overlays
on ``/etc`` and ``/usr/local/bin``); in containers they are baked into
``hil-sim/l4t-base``, where real L4T images get them from the nvidia runtime.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: JetPack 6.2 (L4T R36.4.3), as on an Orin.
NV_TEGRA_RELEASE = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)

#: A stand-in for NVIDIA's tegrastats printing JetPack 6 lines with drifting numbers.
TEGRASTATS = r'''#!/usr/bin/python3
"""tegrastats (hil-sim stand-in): prints JetPack 6 style lines until killed."""
import argparse
import random
import signal
import sys
import time


def main():
    parser = argparse.ArgumentParser(prog="tegrastats")
    parser.add_argument("--interval", type=int, default=1000, help="sample period in ms")
    parser.add_argument("--logfile", default=None, help="append lines to this file")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.interval <= 0:
        parser.error("--interval must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    out = open(args.logfile, "a", buffering=1) if args.logfile else sys.stdout
    rng = random.Random()
    ram, swap, gr3d = 2147.0, 1476.0, 0.0
    temps = {"cpu": 47.687, "soc2": 46.718, "gpu": 48.625}
    power = {"VDD_IN": 4556.0, "VDD_CPU_GPU_CV": 483.0, "VDD_SOC": 1451.0}
    sums = dict.fromkeys(power, 0.0)
    samples = 0
    period = args.interval / 1000.0
    next_at = time.monotonic()
    try:
        while True:
            samples += 1
            ram = min(7000.0, max(1500.0, ram + rng.uniform(-40, 40)))
            swap = min(3000.0, max(1000.0, swap + rng.uniform(-5, 5)))
            gr3d = min(99.0, max(0.0, gr3d + rng.uniform(-10, 10)))
            cores = []
            for i in range(6):
                if i in (2, 3):
                    cores.append("off")
                else:
                    cores.append("%d%%@%d" % (rng.randint(0, 35), rng.choice((729, 1190, 1510))))
            for key in temps:
                temps[key] = min(80.0, max(35.0, temps[key] + rng.uniform(-0.3, 0.3)))
            tj = max(temps.values())
            for key in power:
                power[key] = max(100.0, power[key] * rng.uniform(0.97, 1.03))
                sums[key] += power[key]
            rails = " ".join(
                "%s %dmW/%dmW" % (key, power[key], sums[key] / samples) for key in power
            )
            line = (
                "%s RAM %d/7620MB (lfb 2x4MB) SWAP %d/3810MB (cached 1MB) CPU [%s] "
                "GR3D_FREQ %d%% cpu@%.3fC soc2@%.3fC gpu@%.3fC tj@%.3fC %s"
                % (
                    time.strftime("%m-%d-%Y %H:%M:%S"),
                    ram,
                    swap,
                    ",".join(cores),
                    gr3d,
                    temps["cpu"],
                    temps["soc2"],
                    temps["gpu"],
                    tj,
                    rails,
                )
            )
            out.write(line + "\n")
            out.flush()
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    except (KeyboardInterrupt, BrokenPipeError):
        pass


if __name__ == "__main__":
    main()
'''


#: Where the board's ``tegrastats`` reads the GR3D load to report (a number, 0-100), if present.
GR3D_LOAD_FILE = "~/.hil-sim/gr3d-load"
#: The environment variable that names another file for it.
GR3D_LOAD_ENV = "HIL_SIM_GR3D_FILE"

_GR3D_DRIFT = "            gr3d = min(99.0, max(0.0, gr3d + rng.uniform(-10, 10)))\n"
_GR3D_TOLD = (
    "            gr3d = min(99.0, max(0.0, gr3d + rng.uniform(-10, 10)))\n"
    "            try:  # the load a test asked for (hil.sim.face.GR3D_LOAD_FILE)\n"
    f"                where = os.environ.get({GR3D_LOAD_ENV!r}, {GR3D_LOAD_FILE!r})\n"
    "                with open(os.path.expanduser(where)) as told:\n"
    "                    gr3d = min(100.0, max(0.0, float(told.read(16).strip())))\n"
    "            except (OSError, ValueError):\n"
    "                pass\n"
)


def board_tegrastats() -> str:
    """The board's ``tegrastats``: :data:`TEGRASTATS` whose GR3D load can be told.

    Each sample reads :data:`GR3D_LOAD_FILE` (or the file ``$HIL_SIM_GR3D_FILE``
    names) in the board user's home: a number there is the GR3D load printed,
    so a test sets what the GPU evidence sees; without the file the load
    drifts as before.  Only the board's copy reads it: the images' copy stays
    :data:`TEGRASTATS`, byte for byte, so the images built on it are kept.
    """
    assert _GR3D_DRIFT in TEGRASTATS
    return TEGRASTATS.replace("import argparse\n", "import argparse\nimport os\n", 1).replace(
        _GR3D_DRIFT, _GR3D_TOLD, 1)


def face_digest() -> str:
    """A short hash of the face's content, used to tell stale images apart."""
    return hashlib.sha256((NV_TEGRA_RELEASE + TEGRASTATS).encode()).hexdigest()[:16]


def write_face(root: Path, hostname: str | None = None) -> None:
    """Write the face under ``root``: ``root/etc/nv_tegra_release`` and ``root/bin/tegrastats``.

    With ``hostname`` (a pool board) also ``root/etc/hostname``: a file that differs per board.
    """
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    release = root / "etc" / "nv_tegra_release"
    release.write_text(NV_TEGRA_RELEASE)
    release.chmod(0o644)
    if hostname is not None:
        (root / "etc" / "hostname").write_text(f"{hostname}\n")
        (root / "etc" / "hostname").chmod(0o644)
    tool = root / "bin" / "tegrastats"
    tool.write_text(board_tegrastats())
    tool.chmod(0o755)
