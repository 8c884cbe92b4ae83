"""The Allure report generators: Allure 3 from npm (preferred) or Allure 2's commandline.

Allure 3 is the npm package ``allure``, pinned to :data:`ALLURE3_VERSION` and
installed on demand into a project-local cache (``.hil/npm/allure-<version>/``
under the project root, or ``$HIL_TOOLS_DIR/npm/...``), so a CI runner can
cache that folder.  Allure 2 is used when the user has its ``allure``
commandline (2.x, needs Java) on PATH and no Node.js, or asks for it.

Neither is imported or looked for at pytest start-up: only ``hil report`` and
``hil nightly`` use this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from hil.errors import ConfigError, ReportToolError, ReportToolMissingError
from hil.locking import exclusive_lock
from hil.own import mark_own, remove_own
from hil.progress import Progress
from hil.result import Result

#: The exact Allure 3 release we generate with (``npm view allure versions``).
ALLURE3_VERSION = "3.18.0"
#: Minimum Node.js major version Allure 3 runs on.
NODE_MIN_MAJOR = 20

EngineKind = Literal["allure3", "allure2"]

INSTALL_HINT = (
    "install Node.js 20+ for Allure 3 (Debian/Ubuntu: `apt-get install -y nodejs npm`; "
    "macOS: `brew install node`), or Allure 2's commandline with Java "
    "(`apt-get install -y default-jre` and https://allurereport.org/docs/install/)"
)


@dataclass(frozen=True)
class Engine:
    """A resolved report generator: its kind, the command that starts it and its version."""

    kind: EngineKind
    argv: tuple[str, ...]
    version: str

    def describe(self) -> str:
        """``'Allure 3.18.0 (npm)'``."""
        return f"Allure {self.version} ({'npm' if self.kind == 'allure3' else 'commandline'})"


def tools_dir(root: Path) -> Path:
    """Where downloaded tools live: ``$HIL_TOOLS_DIR`` or ``<root>/.hil``."""
    env = os.environ.get("HIL_TOOLS_DIR")
    return Path(env) if env else root / ".hil"


def allure3_prefix(root: Path, version: str = ALLURE3_VERSION) -> Path:
    """The npm prefix Allure ``version`` is installed into."""
    return tools_dir(root) / "npm" / f"allure-{version}"


def allure3_bin(prefix: Path) -> Path:
    """The ``allure`` launcher inside an npm prefix."""
    return prefix / "node_modules" / ".bin" / "allure"


def node_major() -> int | None:
    """The major version of ``node`` on PATH, or None without Node.js."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)", out.strip())
    return int(match.group(1)) if match else None


def find_allure2() -> Engine | None:
    """Allure 2's commandline on PATH (``allure --version`` says 2.x), or None."""
    allure = shutil.which("allure")
    if allure is None or shutil.which("java") is None:
        return None
    try:
        out = subprocess.run([allure, "--version"], capture_output=True, text=True, timeout=60,
                             check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if re.match(r"2\.\d+", out):
        return Engine("allure2", (allure,), out.splitlines()[0])
    return None


def install_allure3(root: Path, progress: Progress, version: str = ALLURE3_VERSION) -> Engine:
    """Install Allure ``version`` from npm into the project cache (once) and return it."""
    prefix = allure3_prefix(root, version)
    launcher = allure3_bin(prefix)
    # An exclusive lock, so parallel jobs do not install into one prefix at once.
    with exclusive_lock(prefix.parent / f".allure-{version}.lock"):
        if not launcher.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise ReportToolMissingError(f"npm is missing (Node.js is there); {INSTALL_HINT}")
            staging = prefix.with_name(prefix.name + f".tmp{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            # Every package pinned by our lock (integrity hashes) when it is the pinned version;
            # no package's install scripts run either way.
            (staging / "package.json").write_text(json.dumps(
                {"name": "hil-allure", "private": True, "dependencies": {"allure": version}}),
                encoding="utf-8")
            if version == ALLURE3_VERSION:
                lock = resources.files("hil") / "data" / "allure3-package-lock.json"
                (staging / "package-lock.json").write_bytes(lock.read_bytes())
                command = [npm, "ci", "--prefix", str(staging), "--ignore-scripts",
                           "--no-audit", "--no-fund", "--loglevel=error"]
            else:
                command = [npm, "install", "--prefix", str(staging), "--ignore-scripts",
                           "--no-audit", "--no-fund", "--save-exact", "--loglevel=error",
                           f"allure@{version}"]
            progress.step(f"installing Allure {version} from npm into {prefix}")
            started = time.monotonic()
            result = run_streaming(command, progress, timeout=600)
            if result.exited != 0 or not allure3_bin(staging).exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise ReportToolError(
                    f"installing allure@{version} from npm failed", command=command,
                    exited=result.exited, tail=result.stdout)
            shutil.rmtree(prefix, ignore_errors=True)
            staging.rename(prefix)
            progress.step(f"Allure {version} installed in {time.monotonic() - started:.0f} s")
    return Engine("allure3", (str(launcher),), version)


def select_engine(root: Path, progress: Progress, prefer: str = "auto") -> Engine:
    """The engine to generate with: ``allure3``, ``allure2`` or ``auto``.

    ``auto`` picks Allure 3 when Node.js 20+ is present, else Allure 2's
    commandline when it is on PATH; with neither, one :class:`ReportToolError`
    whose message holds the line that installs what is missing.
    """
    if prefer not in ("auto", "allure3", "allure2"):
        raise ConfigError(f"--engine must be auto, allure3 or allure2, got {prefer!r}")
    major = node_major() if prefer != "allure2" else None
    if prefer in ("auto", "allure3") and major is not None and major >= NODE_MIN_MAJOR:
        return install_allure3(root, progress)
    if prefer in ("auto", "allure2"):
        found = find_allure2()
        if found is not None:
            return found
    if prefer == "allure2":
        raise ReportToolMissingError(
            "Allure 2's commandline (allure 2.x and java) is not on PATH; "
            "install it (https://allurereport.org/docs/install/) or use --engine allure3")
    if major is not None:
        raise ReportToolMissingError(
            f"Node.js {major} is too old for Allure 3 (needs {NODE_MIN_MAJOR}+) and no "
            f"Allure 2 commandline is on PATH; {INSTALL_HINT}")
    java = "Java is present but no Allure 2 commandline" if shutil.which("java") else "no Java"
    raise ReportToolMissingError(f"neither Node.js nor Allure 2 found ({java}); {INSTALL_HINT}")


def run_streaming(command: Sequence[str], progress: Progress, *, timeout: float,
                  cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Result:
    """Run ``command``, showing each output line as progress detail; its result keeps the last
    200 lines of its output (standard error merged) as ``stdout``."""
    tail: list[str] = []
    deadline = time.monotonic() + timeout
    with subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace",
                          env=dict(env) if env is not None else None) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _strip_ansi(raw.rstrip())
            if line.strip() and "Unknown user config" not in line:
                progress.detail(line)
                tail = [*tail[-199:], line]
            if time.monotonic() > deadline:
                proc.kill()
                raise ReportToolError(f"timed out after {timeout:.0f} s", command=command,
                                      exited=-9, tail="\n".join(tail))
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return Result(tuple(command), code, "\n".join(tail), "")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def allure3_config(base: Mapping[str, Any], *, name: str, history_file: Path | None,
                   history_limit: int, categories: Sequence[Mapping[str, Any]],
                   single_file: bool | None = None) -> dict[str, Any]:
    """The checked-in ``allurerc.json`` with this run's history, categories and name laid over."""
    config: dict[str, Any] = json.loads(json.dumps(base))  # deep copy
    config["name"] = name
    if history_file is not None:
        config["historyPath"] = str(history_file)
        config["historyLimit"] = history_limit
    else:
        config.pop("historyPath", None)
    config["categories"] = {"rules": [dict(c) for c in categories]}
    plugins = config.setdefault("plugins", {"awesome": {"options": {}}})
    awesome = plugins.setdefault("awesome", {"options": {}})
    options = awesome.setdefault("options", {})
    options.setdefault("reportName", name)
    if single_file is not None:
        options["singleFile"] = single_file
    return config


def generate_allure3(engine: Engine, results: Path, output: Path, config: Mapping[str, Any],
                     work: Path, progress: Progress, timeout: float = 600) -> None:
    """``allure generate`` (Allure 3) of one staged results folder into ``output``."""
    work.mkdir(parents=True, exist_ok=True)
    rc = work / "allurerc.json"
    rc.write_text(json.dumps(config, indent=2), encoding="utf-8")
    remove_own(output, "the report folder")
    command = [*engine.argv, "generate", "--config", str(rc), "--output", str(output),
               str(results)]
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"}
    result = run_streaming(command, progress, timeout=timeout, cwd=work, env=env)
    if result.exited != 0 or not (output / "index.html").is_file():
        raise ReportToolError("Allure 3 could not generate the report", command=command,
                              exited=result.exited, tail=result.stdout)
    if "plugin awesome error" in result.stdout:
        raise ReportToolError("Allure 3's report plugin failed", command=command,
                              exited=result.exited, tail=result.stdout)
    mark_own(output)


def generate_allure2(engine: Engine, results: Path, output: Path, progress: Progress,
                     timeout: float = 600) -> None:
    """``allure generate --clean`` (Allure 2) of one staged results folder into ``output``."""
    # Not `--clean`: Allure would empty whatever folder it was given.
    remove_own(output, "the report folder")
    command = [*engine.argv, "generate", "-o", str(output), str(results)]
    result = run_streaming(command, progress, timeout=timeout)
    if result.exited != 0 or not (output / "index.html").is_file():
        raise ReportToolError("Allure 2 could not generate the report", command=command,
                              exited=result.exited, tail=result.stdout)
    mark_own(output)


def history_lines(history_file: Path) -> int:
    """How many runs an Allure 3 history file holds (one JSON line per run)."""
    if not history_file.is_file():
        return 0
    return sum(1 for line in history_file.read_text(encoding="utf-8").splitlines()
               if line.strip())


def trim_allure2_history(history: Path, limit: int) -> None:
    """Keep the last ``limit`` runs in an Allure 2 ``history/`` folder (trends and items)."""
    for trend in history.glob("*-trend.json"):
        data = json.loads(trend.read_text(encoding="utf-8"))
        if isinstance(data, list):
            trend.write_text(json.dumps(data[:limit]), encoding="utf-8")  # newest first
    items = history / "history.json"
    if items.is_file():
        data = json.loads(items.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for value in data.values():
                if isinstance(value, dict) and isinstance(value.get("items"), list):
                    value["items"] = value["items"][:limit]
            items.write_text(json.dumps(data), encoding="utf-8")
