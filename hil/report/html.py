"""``hil report``: Allure results of one or many targets -> one HTML report.

Steps (each shown as a progress line):

1. **stage**: copy every results folder into one staging folder, and lay over
   what pytest-hil knows about each run (``reports/runs/<run-id>/``): a merged
   ``environment.properties`` with one block per target, ``executor.json``
   from the CI's variables, the checked-in ``categories.json``, per failing
   test the tail of its remote log, and per run one "hil run" fixture
   carrying the build log, the preflight table, the phase timings and the
   telemetry (CSV, and a PNG chart with the ``chart`` extra); every item is
   written as allure-commons' model objects by its file logger
   (:mod:`hil.report.allure`);
2. **generate** with Allure 3 (npm, pinned, installed on demand) or Allure 2's
   commandline, carrying the history (trends) from the history folder;
3. optionally **serve** the report on localhost (``--open``).

The same :func:`build_report` is used by ``hil nightly``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allure_commons.model2 import (
    Label,
    Parameter,
    Status,
    StatusDetails,
    TestBeforeResult,
    TestResultContainer,
)

from hil.errors import NoResultsError, ReportToolError
from hil.own import check_own
from hil.progress import Progress
from hil.report.allure import (
    NodeNames,
    attach_data,
    file_logger,
    infrastructure_message,
    is_infrastructure_result,
    result_from_json,
    result_target,
)
from hil.report.allure3 import (
    Engine,
    allure3_config,
    generate_allure2,
    generate_allure3,
    history_lines,
    select_engine,
    trim_allure2_history,
)
from hil.report.chart import (
    ChartUnavailableError,
    Marker,
    panels_from_samples,
    render_chart,
    telemetry_csv,
)

#: Where the checked-in report configuration lives, relative to the project root.
CONFIG_DIR = Path("reports") / "allure"
#: What to do when ``hil report`` finds no results.
NO_RESULTS_HINT = ("run the tests first (pytest --target=NAME writes reports/allure-results), "
                   "or name the results folder: hil report PATH")
DEFAULT_HISTORY_LIMIT = 20
#: Lines of remote log attached to a failing test.
LOG_TAIL_LINES = 120



# --------------------------------------------------------------------------- inputs


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (bad lines skipped; missing file: [])."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


@dataclass
class RunFolder:
    """One container-target run folder, ``reports/runs/<run-id>/``, as read back."""

    path: Path
    target: str
    run_id: str
    run: dict[str, Any] = field(default_factory=dict)
    preflight: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> RunFolder:
        """Read ``run.json``, ``preflight.json``, ``timings.json`` and ``error.json``."""
        run = read_json(path / "run.json")
        run = run if isinstance(run, dict) else {}
        error = read_json(path / "error.json")
        preflight = read_json(path / "preflight.json")
        timings = read_json(path / "timings.json")
        name = path.name
        target = str(run.get("target") or (error or {}).get("target") or
                     (name.split("-", 2)[2] if name.count("-") >= 2 else name))
        return cls(path=path, target=target, run_id=str(run.get("run_id") or name), run=run,
                   preflight=preflight if isinstance(preflight, dict) else None,
                   timings=timings if isinstance(timings, dict) else None,
                   error=error if isinstance(error, dict) else None)

    def events(self) -> list[dict[str, Any]]:
        """The worker's events (``events.jsonl``)."""
        return read_jsonl(self.path / "events.jsonl")

    def telemetry(self) -> list[dict[str, Any]]:
        """Telemetry samples (``telemetry.jsonl``), each with ``t`` in epoch seconds."""
        return [s for s in read_jsonl(self.path / "telemetry.jsonl")
                if isinstance(s.get("t"), (int, float))]


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` looks like a ``reports/runs/<run-id>/`` folder."""
    return path.is_dir() and any((path / n).is_file() for n in
                                 ("run.json", "error.json", "events.jsonl", "preflight.json"))


def runs_for(results: Path, targets: Iterable[str]) -> list[RunFolder]:
    """The run folders that produced ``results``.

    ``reports/runs/<id>/allure-results`` -> its parent; ``<reports>/allure-results``
    -> per target, the newest ``<reports>/runs/*`` run of that target.
    """
    if is_run_folder(results.parent) and results.name == "allure-results":
        return [RunFolder.load(results.parent)]
    runs_dir = results.parent / "runs"
    if not runs_dir.is_dir():
        return []
    newest: dict[str, RunFolder] = {}
    for path in sorted(p for p in runs_dir.iterdir() if is_run_folder(p)):
        run = RunFolder.load(path)
        newest[run.target] = run  # sorted by run id = by time
    wanted = set(targets)
    return [run for name, run in sorted(newest.items()) if name in wanted]


# --------------------------------------------------------------------------- environment

#: Preflight fact names (lower-cased) -> the key shown in the report.
FACT_KEYS: dict[str, str] = {
    "l4t": "L4T", "l4t release": "L4T", "nv_tegra_release": "L4T", "jetpack": "JetPack",
    "cuda": "CUDA", "cuda version": "CUDA", "tensorrt": "TensorRT", "tensorrt version": "TensorRT",
    "gpu": "GPU", "gpu name": "GPU", "hostname": "board.hostname", "host": "board.hostname",
    "board": "board.model", "model": "board.model", "docker": "docker.version",
    "docker version": "docker.version", "kernel": "kernel",
    "arch": "arch", "machine": "arch", "onnxruntime": "onnxruntime.version",
    "torch": "torch.version",
}


def _fact_key(name: str) -> str:
    return FACT_KEYS.get(name.strip().lower(), re.sub(r"\s+", ".", name.strip()))


def target_environment(properties: Mapping[str, str], run: RunFolder | None) -> dict[str, str]:
    """What the report shows for one target: environment.properties + preflight + run."""
    env = {k: v for k, v in properties.items() if v != ""}
    if run is not None:
        facts = (run.preflight or {}).get("facts") or {}
        for name, value in facts.items():
            if value not in (None, ""):
                env.setdefault(_fact_key(str(name)), str(value))
        image = run.run.get("image")
        if image:
            env["image"] = str(image)
        for key in ("image_digest", "digest", "image_id"):
            if run.run.get(key):
                env["image.digest"] = str(run.run[key])
        env["run.id"] = run.run_id
        if "exit_code" in run.run:
            env["exit.code"] = str(run.run["exit_code"])
    return env


def merge_environments(per_target: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """One environment.properties for all targets: ``<target>.<key>`` when there are several.

    Keys stay free of spaces and colons, which Java's properties format (Allure 2)
    would take as separators; values are put on one line.
    """
    def clean(text: str) -> str:
        return re.sub(r"[\s:=]+", "_", text)

    def one_line(text: str) -> str:
        return " ".join(str(text).split())

    if len(per_target) == 1:
        ((_, env),) = per_target.items()
        return {clean(k): one_line(v) for k, v in env.items()}
    merged: dict[str, str] = {"targets": ", ".join(sorted(per_target))}
    for target, env in sorted(per_target.items()):
        for key, value in env.items():
            if key != "target":
                merged[f"{clean(target)}.{clean(key)}"] = one_line(value)
    return merged


def executor_from_env(env: Mapping[str, str]) -> dict[str, Any] | None:
    """Allure's ``executor.json`` from GitHub Actions, GitLab CI or Jenkins variables."""
    if env.get("GITHUB_ACTIONS") == "true":
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repo = env.get("GITHUB_REPOSITORY", "")
        run_id = env.get("GITHUB_RUN_ID", "")
        number = env.get("GITHUB_RUN_NUMBER", "")
        return {"name": "GitHub Actions", "type": "github", "url": f"{server}/{repo}",
                "buildOrder": int(number) if number.isdigit() else None,
                "buildName": f"{env.get('GITHUB_WORKFLOW', 'workflow')} #{number}",
                "buildUrl": f"{server}/{repo}/actions/runs/{run_id}",
                "reportName": "pytest-hil nightly"}
    if env.get("GITLAB_CI") == "true":
        iid = env.get("CI_PIPELINE_IID", "")
        return {"name": "GitLab CI", "type": "gitlab", "url": env.get("CI_PROJECT_URL", ""),
                "buildOrder": int(iid) if iid.isdigit() else None,
                "buildName": f"{env.get('CI_JOB_NAME', 'job')} #{iid}",
                "buildUrl": env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL", ""),
                "reportName": "pytest-hil nightly"}
    if env.get("JENKINS_URL"):
        number = env.get("BUILD_NUMBER", "")
        return {"name": "Jenkins", "type": "jenkins", "url": env.get("JENKINS_URL", ""),
                "buildOrder": int(number) if number.isdigit() else None,
                "buildName": env.get("BUILD_TAG") or f"{env.get('JOB_NAME', 'job')} #{number}",
                "buildUrl": env.get("BUILD_URL", ""), "reportName": "pytest-hil nightly"}
    return None


# --------------------------------------------------------------------------- logs


def nodeid_key(nodeid: str) -> tuple[str, str]:
    """(Allure ``fullName``, parameter suffix) of a pytest node id, as allure-pytest builds it."""
    names = NodeNames.of(nodeid)
    return names.full_name, names.params


def result_key(result: Any) -> tuple[str, str]:
    """(``fullName``, parameter suffix of ``name``) of an Allure ``TestResult``."""
    name = str(result.name or "")
    suffix = name[name.index("[") :] if "[" in name and name.endswith("]") else ""
    return str(result.fullName or ""), suffix


def _report_text(report: Mapping[str, Any]) -> str:
    """Failure text and captured sections of one serialized TestReport."""
    import pytest  # only here: report rendering needs pytest's deserializer

    try:
        rep = pytest.TestReport._from_json(dict(report))
        text = rep.longreprtext
        for title, content in rep.sections:
            text += f"\n----- {title} -----\n{content}"
        return text
    except Exception:  # an unexpected shape still shows something
        longrepr = report.get("longrepr")
        return longrepr if isinstance(longrepr, str) else json.dumps(longrepr, indent=1)


def pytest_log_block(log: str, nodeid: str) -> str:
    """The ``____ test_name ____`` failure block of ``nodeid`` in a pytest terminal log."""
    name = nodeid.split("::", 1)[1].replace("::", ".") if "::" in nodeid else nodeid
    header = re.compile(r"^_{3,} (.+?) _{3,}$")
    lines = log.splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        match = header.match(line)
        if match:
            inside = match.group(1) in (name, f"ERROR at setup of {name}",
                                        f"ERROR at teardown of {name}")
        elif line.startswith("====") and inside:
            inside = False
        if inside:
            out.append(line)
    return "\n".join(out)


def failure_logs(run: RunFolder) -> dict[tuple[str, str], str]:
    """Per failing test of a run: the tail of its remote log, keyed by :func:`nodeid_key`."""
    try:
        log = (run.path / "pytest.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        log = ""
    texts: dict[str, list[str]] = {}
    for event in run.events():
        report = event.get("report")
        if event.get("ev") != "logreport" or not isinstance(report, dict):
            continue
        if report.get("outcome") != "failed":
            continue
        nodeid = str(report.get("nodeid", ""))
        texts.setdefault(nodeid, []).append(
            f"===== {nodeid} ({report.get('when')}: failed) =====\n{_report_text(report)}")
    out: dict[tuple[str, str], str] = {}
    for nodeid, parts in texts.items():
        block = pytest_log_block(log, nodeid)
        text = "\n\n".join(parts)
        if block:
            text += f"\n\n===== pytest.log on target '{run.target}' =====\n{block}"
        lines = text.splitlines()
        if len(lines) > LOG_TAIL_LINES:
            lines = [f"[... {len(lines) - LOG_TAIL_LINES} earlier lines cut]",
                     *lines[-LOG_TAIL_LINES:]]
        out[nodeid_key(nodeid)] = "\n".join(lines) + "\n"
    return out


def find_log(logs: Mapping[tuple[str, str], str], key: tuple[str, str]) -> str | None:
    """The log of ``key``; tolerates a rootdir that differs by leading packages."""
    if key in logs:
        return logs[key]
    full, params = key
    for (other, other_params), text in logs.items():
        if other_params == params and (full.endswith("." + other) or other.endswith("." + full)):
            return text
    return None


# --------------------------------------------------------------------------- run attachments


def preflight_table(preflight: Mapping[str, Any]) -> str:
    """``preflight.json`` as a plain-text table (like ``hil doctor``)."""
    checks = [c for c in preflight.get("checks") or () if isinstance(c, dict)]
    width = max((len(str(c.get("name", ""))) for c in checks), default=4)
    ok = "ok" if preflight.get("ok") else "FAILED"
    lines = [f"preflight of target '{preflight.get('target', '?')}': {ok}", ""]
    for c in checks:
        mark = "ok  " if c.get("ok") else ("FAIL" if c.get("required", True) else "warn")
        lines.append(f"  {mark} {c.get('name', '')!s:<{width}}  {c.get('detail', '')}")
    facts = preflight.get("facts") or {}
    if facts:
        lines += ["", "facts:"]
        lines += [f"  {k}: {v}" for k, v in sorted(facts.items())]
    return "\n".join(lines) + "\n"


def timings_table(timings: Mapping[str, Any]) -> str:
    """``timings.json`` as a table with each phase's share of the total and a bar."""
    phases = [(str(k), float(v)) for k, v in timings.items() if isinstance(v, (int, float))]
    total = sum(v for _, v in phases) or 1.0
    width = max((len(k) for k, _ in phases), default=5)
    lines = [f"{'phase':<{width}}  seconds  share"]
    for name, value in phases:
        share = value / total
        lines.append(f"{name:<{width}}  {value:7.2f}  {share:5.0%}  {'#' * round(share * 40)}")
    lines.append(f"{'total':<{width}}  {sum(v for _, v in phases):7.2f}")
    return "\n".join(lines) + "\n"


def test_markers(run: RunFolder, results: Sequence[Any]) -> list[Marker]:
    """Test boundaries on the telemetry time axis.

    From ``events.jsonl`` when its events carry a wall-clock ``t``; otherwise
    from the Allure ``TestResult``s' own start/stop (epoch milliseconds).
    """
    markers: list[Marker] = []
    for event in run.events():
        t = event.get("t")
        if not isinstance(t, (int, float)):
            continue
        if event.get("ev") == "logstart":
            markers.append(Marker(float(t), "start", str(event.get("nodeid", ""))))
        elif event.get("ev") == "logreport":
            report = event.get("report") or {}
            when, outcome = report.get("when"), report.get("outcome")
            if when == "call" or (when == "setup" and outcome != "passed"):
                markers.append(Marker(float(t), str(outcome), str(report.get("nodeid", ""))))
        elif event.get("ev") == "finish":
            # Compact passed phases ([when, duration, start, stop]): the call ends at its stop.
            for phase in event.get("passed") or ():
                if isinstance(phase, list) and len(phase) == 4 and phase[0] == "call":
                    markers.append(Marker(float(phase[3]), "passed", str(event.get("nodeid", ""))))
    if markers:
        return markers
    for result in results:
        start, stop, name = result.start, result.stop, str(result.name or "")
        if isinstance(start, (int, float)) and isinstance(stop, (int, float)):
            markers.append(Marker(start / 1000.0, "start", name))
            markers.append(Marker(stop / 1000.0, str(result.status or ""), name))
    return markers


# --------------------------------------------------------------------------- staging


@dataclass
class StagedTarget:
    """What staging learned about one target."""

    name: str
    statuses: dict[str, int] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    infrastructure: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class Staged:
    """The staging folder and a summary of its content."""

    folder: Path
    targets: dict[str, StagedTarget]
    results: int = 0
    attachments: int = 0


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def keep_own_attachments(node: Any, results: Path) -> int:
    """Drop, from a result or container's JSON (steps, fixtures included), every attachment
    whose ``source`` is not the bare name of a regular file in ``results``: Allure copies
    what ``source`` names into the report, and the code under test wrote it.  Returns how
    many were dropped."""
    dropped = 0
    if isinstance(node, list):
        return sum(keep_own_attachments(item, results) for item in node)
    if not isinstance(node, dict):
        return 0
    found = node.get("attachments")
    if isinstance(found, list):
        kept = [a for a in found if isinstance(a, dict) and _own_file(a.get("source"), results)]
        dropped += len(found) - len(kept)
        node["attachments"] = kept
    for key in ("steps", "befores", "afters"):
        dropped += keep_own_attachments(node.get(key), results)
    return dropped


def _own_file(source: Any, results: Path) -> bool:
    if not isinstance(source, str) or source in ("", ".", "..") or "/" in source \
            or "\\" in source or "\0" in source:
        return False
    path = results / source
    return path.is_file() and not path.is_symlink()


class Stager:
    """Copies results folders into one staging folder and adds pytest-hil's extras.

    Everything it writes (results, the run containers, attachments) goes through
    allure-commons' file logger as ``allure_commons.model2`` objects.
    """

    def __init__(self, folder: Path, progress: Progress) -> None:
        self.folder = folder
        self.progress = progress
        self.logger = file_logger(folder, clean=True)
        self.staged = Staged(folder=folder, targets={})
        self.chart_hint_shown = False

    def attach(self, name: str, content: bytes | str, mime: str, ext: str) -> Any:
        """Write one attachment file; returns its ``Attachment`` entry."""
        self.staged.attachments += 1
        return attach_data(self.logger, name, content, mime, ext)

    def add_folder(self, results: Path) -> None:
        """Stage one results folder with its run folders' extras."""
        from hil.worker import parse_environment  # the worker writes the file

        if not results.is_dir():
            raise NoResultsError(f"no Allure results folder at {results}", hint=NO_RESULTS_HINT)
        props_file = results / "environment.properties"
        properties = (parse_environment(props_file.read_text(encoding="utf-8"))
                      if props_file.is_file() else {})
        loaded: list[Any] = []
        for path in sorted(results.iterdir()):
            if path.is_symlink() or not path.is_file() or path.name in (
                    "environment.properties", "categories.json", "executor.json"):
                continue
            if path.name.endswith(("-result.json", "-container.json")):
                data = _json_object(path)
                if data is not None:
                    keep_own_attachments(data, results)
                    if path.name.endswith("-result.json"):
                        loaded.append(result_from_json(data))
                    else:
                        (self.folder / path.name).write_text(json.dumps(data), encoding="utf-8")
                    continue
            shutil.copy2(path, self.folder / path.name)
        default_target = properties.get("target") or results.parent.name
        by_target: dict[str, list[Any]] = {}
        for result in loaded:
            target = result_target(result)
            if target is None:
                target = default_target
                result.parameters.append(Parameter(name="target", value=repr(target)))
            if not any(label.name == "target" for label in result.labels):
                result.labels.append(Label(name="target", value=target))
            by_target.setdefault(target, []).append(result)
        targets = set(by_target) or ({properties["target"]} if "target" in properties else set())
        runs = runs_for(results, targets)
        for run in runs:
            self._add_run(run, by_target.get(run.target, []))
        for target in targets:
            found = next((r for r in runs if r.target == target), None)
            info = self.staged.targets.setdefault(target, StagedTarget(target))
            own = properties.get("target") in (None, target)
            env = target_environment({**properties, "target": target} if own
                                     else {"target": target}, found)
            info.environment.update(env)
        for target, group in by_target.items():
            info = self.staged.targets.setdefault(target, StagedTarget(target))
            for result in group:
                status = str(result.status or "unknown")
                info.statuses[status] = info.statuses.get(status, 0) + 1
                if is_infrastructure_result(result):
                    info.infrastructure.append(str(result.statusDetails.message))
                self.logger.report_result(result)
                self.staged.results += 1

    def _add_run(self, run: RunFolder, results: list[Any]) -> None:
        """Failing tests get their log tail; the run gets a fixture with its artifacts."""
        self.staged.targets.setdefault(run.target, StagedTarget(run.target)).runs.append(
            run.run_id)
        logs = failure_logs(run)
        for result in results:
            if (result.status not in (Status.FAILED, Status.BROKEN)
                    or is_infrastructure_result(result)):
                continue
            text = find_log(logs, result_key(result))
            if text:
                result.attachments.append(
                    self.attach(f"remote log tail ({run.target})", text, "text/plain", "txt"))
        attachments = self._run_attachments(run, results)
        started = run.run.get("started")
        finished = run.run.get("finished")
        start_ms = int(float(started) * 1000) if isinstance(started, (int, float)) else 0
        stop_ms = int(float(finished) * 1000) if isinstance(finished, (int, float)) else start_ms
        fixture = TestBeforeResult(
            name=f"hil run {run.run_id} on {run.target}",
            status=Status.BROKEN if run.error else Status.PASSED, stage="finished",
            start=start_ms, stop=stop_ms, attachments=attachments)
        if run.error:
            fixture.statusDetails = StatusDetails(message=infrastructure_message(
                str(run.error.get("kind")), run.error.get("exit_code"),
                str(run.error.get("message"))))
        self.logger.report_container(TestResultContainer(
            uuid=str(uuid.uuid4()), name=f"hil run {run.run_id}",
            children=[r.uuid for r in results if r.uuid], befores=[fixture],
            start=start_ms, stop=stop_ms))

    def _run_attachments(self, run: RunFolder, results: list[Any]) -> list[Any]:
        """The run fixture's attachments: logs, preflight, timings, telemetry, run files."""
        attachments: list[Any] = []
        for name, title in (("build.log", "build log"), ("pytest.log", "pytest.log (in target)"),
                            ("hil.log", "hil log")):
            path = run.path / name
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                lines = text.splitlines()
                if len(lines) > 3000:
                    text = "\n".join([f"[... {len(lines) - 3000} earlier lines cut]",
                                      *lines[-3000:]])
                attachments.append(self.attach(title, text, "text/plain", "txt"))
        # [compose] targets: the build of the services and each service's log.
        for path in sorted((run.path / "compose").glob("*.log")):
            attachments.append(self.attach(
                f"compose {'build log' if path.stem == 'build' else 'service ' + path.stem}",
                path.read_text(encoding="utf-8", errors="replace"), "text/plain", "txt"))
        if run.preflight:
            attachments.append(self.attach("preflight", preflight_table(run.preflight),
                                           "text/plain", "txt"))
        if run.timings:
            attachments.append(self.attach("phase timings", timings_table(run.timings),
                                           "text/plain", "txt"))
        samples = run.telemetry()
        if samples:
            attachments.append(self.attach("telemetry (CSV)", telemetry_csv(samples),
                                           "text/csv", "csv"))
            try:
                png = render_chart(panels_from_samples(samples), test_markers(run, results),
                                   title=f"{run.target}  {run.run_id}")
            except ChartUnavailableError as missing:
                if not self.chart_hint_shown:
                    self.progress.step(str(missing))
                    self.chart_hint_shown = True
            else:
                attachments.append(self.attach("telemetry chart", png, "image/png", "png"))
        for name in ("run.json", "error.json"):
            if (run.path / name).is_file():
                attachments.append(self.attach(name, (run.path / name).read_bytes(),
                                               "application/json", "json"))
        return attachments

    def finish(self, categories: Sequence[Mapping[str, Any]],
               executor: Mapping[str, Any] | None) -> Staged:
        """Write the merged environment, categories and executor files.

        allure-commons has no model for these three; they are Allure 2's plain formats.
        """
        from hil.worker import write_environment  # the one writer of environment.properties

        per_target = {name: t.environment for name, t in self.staged.targets.items()}
        if per_target:
            write_environment(self.folder, merge_environments(per_target))
        (self.folder / "categories.json").write_text(json.dumps(list(categories), indent=1),
                                                    encoding="utf-8")
        if executor:
            (self.folder / "executor.json").write_text(json.dumps(executor, indent=1),
                                                      encoding="utf-8")
        return self.staged


# --------------------------------------------------------------------------- config


def find_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder upwards with ``pyproject.toml`` or ``.git``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return here


def load_categories(root: Path) -> list[dict[str, Any]]:
    """The checked-in categories (``reports/allure/categories.json``, Allure 2's format)."""
    path = root / CONFIG_DIR / "categories.json"
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / CONFIG_DIR / "categories.json"
    data = read_json(path)
    if not isinstance(data, list):
        raise ReportToolError(f"{path}: expected a JSON list of categories")
    return [c for c in data if isinstance(c, dict)]


def load_allurerc(root: Path) -> dict[str, Any]:
    """The checked-in Allure 3 configuration (``reports/allure/allurerc.json``)."""
    for path in (root / CONFIG_DIR / "allurerc.json",
                 Path(__file__).resolve().parents[2] / CONFIG_DIR / "allurerc.json"):
        data = read_json(path)
        if isinstance(data, dict):
            return data
    return {"plugins": {"awesome": {"options": {"singleFile": True}}}}


# --------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class ReportRequest:
    """Everything one report generation needs."""

    results: tuple[Path, ...]
    output: Path
    root: Path
    history: Path | None
    history_limit: int = DEFAULT_HISTORY_LIMIT
    engine: str = "auto"
    name: str = "pytest-hil"
    single_file: bool | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class ReportOutcome:
    """What was generated."""

    index: Path
    engine: Engine
    staged: Staged
    history_runs: int
    seconds: float


def build_report(request: ReportRequest, progress: Progress) -> ReportOutcome:
    """Stage the results, generate the report with history; raises ReportToolError.

    A results folder that is missing, or folders that hold no result at all,
    raise :class:`NoResultsError` (a usage error) before anything is generated.
    """
    started = time.monotonic()
    for folder in request.results:
        if not folder.is_dir():
            raise NoResultsError(f"no Allure results folder at {folder}", hint=NO_RESULTS_HINT)
    check_own(request.output, "the report folder")
    work = request.output.parent / f".{request.output.name}.work"
    progress.step(f"staging {len(request.results)} results folder(s)")
    stager = Stager(work / "results", progress)
    for folder in request.results:
        stager.add_folder(folder)
    categories = load_categories(request.root)
    staged = stager.finish(categories, executor_from_env(request.environ))
    if not staged.results:
        raise NoResultsError("no Allure results in " + ", ".join(map(str, request.results)),
                             hint=NO_RESULTS_HINT)
    engine = select_engine(request.root, progress, request.engine)
    summary = ", ".join(f"{name} ({sum(t.statuses.values())} results)"
                        for name, t in sorted(staged.targets.items()))
    progress.step(f"staged {staged.results} results, {staged.attachments} attachments: "
                  f"{summary or 'no results'}")
    progress.step(f"generating the report with {engine.describe()} into {request.output}")
    history_runs = 0
    if engine.kind == "allure3":
        history_file = None
        if request.history is not None:
            request.history.mkdir(parents=True, exist_ok=True)
            history_file = request.history / "allure3-history.jsonl"
        config = allure3_config(load_allurerc(request.root), name=request.name,
                                history_file=history_file, history_limit=request.history_limit,
                                categories=categories, single_file=request.single_file)
        generate_allure3(engine, staged.folder, request.output, config, work, progress)
        if history_file is not None:
            history_runs = history_lines(history_file)
    else:
        saved = request.history / "allure2" / "history" if request.history else None
        if saved is not None and saved.is_dir():
            shutil.copytree(saved, staged.folder / "history", dirs_exist_ok=True)
        generate_allure2(engine, staged.folder, request.output, progress)
        produced = request.output / "history"
        if saved is not None and produced.is_dir():
            shutil.rmtree(saved, ignore_errors=True)
            shutil.copytree(produced, saved)
            trim_allure2_history(saved, request.history_limit)
            trend = read_json(saved / "history-trend.json")
            history_runs = len(trend) if isinstance(trend, list) else 0
    index = request.output / "index.html"
    seconds = time.monotonic() - started
    progress.step(f"report ready in {seconds:.1f} s: {index}"
                  + (f" (history: {history_runs} run(s) in {request.history})"
                     if request.history else ""))
    return ReportOutcome(index=index, engine=engine, staged=staged, history_runs=history_runs,
                         seconds=seconds)
