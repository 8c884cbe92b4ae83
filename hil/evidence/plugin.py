"""The GPU-evidence plugin: each tier2 test's evidence on its report, and the verdict.

One hook sees every test's reports, whether the test ran in this process
(``local``) or in a container whose reports are replayed here: the reports of
a tier2 test carry its window (setup start to call end), the feed
(:data:`hil.evidence.samples.FEED`) has the samples, so the evidence is made
and judged here, on the host, once.  What follows from it is written from that
one judgement: the call report's outcome (the terminal, ``--junitxml``, the
run's ``junit.xml``, ``--lf`` and the exit code follow the report), junit
properties, ``gpu-evidence.jsonl`` in the run folder, the Allure results
(after the session: :mod:`hil.evidence.allure`) and the summary.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from hil.evidence.samples import DEFAULT_INTERVAL_MS, FEED
from hil.evidence.verdict import (
    IDLE_REASON,
    MODES,
    Evidence,
    evidence,
    idle_throughout,
    judge,
)
from hil.settings import HilSettings
from hil.tiers import item_tier

HELP_MODE = ("tier2 tests that leave the GPU idle (no load and no CUDA context in their "
             "window): 'off' records the evidence only (default), 'warn' warns and labels "
             "them 'gpu: idle' in Allure, 'fail' fails them (default: [tool.hil] gpu_evidence)")
HELP_INTERVAL = ("GPU sampling interval in milliseconds, for the evidence and the telemetry "
                 f"(default: [tool.hil] gpu_interval_ms, else {DEFAULT_INTERVAL_MS})")
#: Seconds, beyond two intervals, a replayed report waits for the sample after its window.
SAMPLE_GRACE_S = 1.0


class GpuIdleWarning(UserWarning):
    """A tier2 test left the GPU idle (``--hil-gpu-evidence=warn``)."""


def add_options(group: Any) -> None:
    """The plugin's options, in the ``hil`` group."""
    group.addoption("--hil-gpu-evidence", dest="hil_gpu_evidence", default=None,
                    choices=MODES, help=HELP_MODE)
    group.addoption("--hil-gpu-interval", dest="hil_gpu_interval", metavar="MS", type=int,
                    default=None, help=HELP_INTERVAL)


def _pyproject(root: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    tool = data.get("tool", {}).get("hil", {})
    return tool if isinstance(tool, dict) else {}


def resolve(config: pytest.Config, root: Path) -> tuple[str, int]:
    """The mode and interval: option, else ``[tool.hil]``, else off and the default."""
    tool = _pyproject(root)
    mode = config.getoption("hil_gpu_evidence") or tool.get("gpu_evidence", "off")
    if mode not in MODES:
        raise pytest.UsageError(f"pyproject.toml [tool.hil] gpu_evidence = {mode!r}: "
                                f"expected one of {', '.join(MODES)}")
    interval = config.getoption("hil_gpu_interval") or tool.get("gpu_interval_ms",
                                                                DEFAULT_INTERVAL_MS)
    if not isinstance(interval, int) or isinstance(interval, bool) or not 50 <= interval <= 60000:
        raise pytest.UsageError(f"GPU sampling interval {interval!r} ms: expected an integer "
                                "from 50 to 60000 (--hil-gpu-interval, [tool.hil] gpu_interval_ms)")
    return str(mode), int(interval)


def report_tier(report: pytest.TestReport) -> int:
    """The tier of a (possibly replayed) report, from its marker keywords."""
    return max((n for n in (2, 3) if f"tier{n}" in report.keywords), default=1)


def _failure(report: pytest.TestReport, found: Evidence) -> Any:
    """The longrepr of a test failed for idling: what pytest builds for an assertion."""
    from _pytest._code.code import ReprEntry, ReprExceptionInfo, ReprFileLocation, ReprTraceback

    path, line = report.location[0], report.location[1]
    crash = ReprFileLocation(path, (line or 0) + 1, IDLE_REASON)
    entry = ReprEntry([f"E   {IDLE_REASON}", f"E   GPU evidence: {found.line()}"], None, None,
                      crash, "short")
    return ReprExceptionInfo(reprtraceback=ReprTraceback([entry], None, "short"), reprcrash=crash)


class GpuEvidence:
    """Makes, records and judges the GPU evidence of every tier2 test."""

    def __init__(self, config: pytest.Config, settings: HilSettings, mode: str,
                 interval_ms: int) -> None:
        self.config = config
        self.settings = settings
        self.mode = mode
        self.interval_ms = interval_ms
        self.local = settings.target.kind == "local"
        self.sampler: Any = None
        self.sampler_note = ""
        self.local_dir: Path | None = None
        self.starts: dict[str, float] = {}
        self.found: dict[str, Evidence] = {}
        self.failed = 0
        FEED.reset()
        FEED.interval_ms = interval_ms

    # -- where samples come from and go -------------------------------------------------
    def run_dir(self) -> Path | None:
        """The run folder: the container session's, or one of our own for ``local``."""
        if not self.local:
            found = getattr(self.config.pluginmanager.get_plugin("hil-session"), "run_dir", None)
            return found if isinstance(found, Path) else None
        if self.local_dir is None:
            from hil.session.runfolder import new_run_id

            self.local_dir = self.settings.reports / "runs" / new_run_id(self.settings.target.name)
            self.local_dir.mkdir(parents=True, exist_ok=True)
        return self.local_dir

    def _start_sampler(self) -> None:
        if self.sampler is not None or self.sampler_note or not self.local:
            return
        from hil.evidence.local import LocalSampler, open_probe

        probe = open_probe()
        if probe is None:
            self.sampler_note = "no GPU sampler here (neither nvidia-ml-py nor nvidia-smi)"
            return
        try:
            folder = self.run_dir()
            assert folder is not None  # the local target makes its own
            self.sampler = LocalSampler(probe, folder / "telemetry.jsonl",
                                        self.interval_ms).start()
        except OSError as err:  # evidence is not worth failing a test for
            self.sampler_note = f"no GPU sampling: {err}"
            return
        self.sampler_note = f"sampled in-process through {probe.how} every {self.interval_ms} ms"

    def _sources(self, report: pytest.TestReport) -> list[str]:
        named = [str(v) for k, v in report.user_properties if k in ("board", "target")]
        known = FEED.sources
        picked = [s for s in named if s in known]
        return picked or known

    # -- hooks --------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """In-process tier2 tests: sampling starts, and samples once as the test starts."""
        if item_tier(item) >= 2:
            self._start_sampler()
            if self.sampler is not None:
                self.sampler.sample_now()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Before the terminal and junit see a tier2 report: its evidence and verdict."""
        if report_tier(report) < 2:
            return
        if report.when == "setup":
            self.starts[report.nodeid] = float(getattr(report, "start", 0) or time.time())
        elif report.when == "call" and report.skipped:
            self.starts.pop(report.nodeid, None)  # skipped in its body: nothing to judge
        elif report.when == "call":
            self._call(report)
        elif report.when == "teardown" and report.nodeid in self.found:
            props = self.found[report.nodeid].properties()
            report.user_properties.extend(p for p in props if p not in report.user_properties)

    def _call(self, report: pytest.TestReport) -> None:
        self._start_sampler()  # xdist's controller: the first tier2 report starts it
        stop = float(getattr(report, "stop", 0) or time.time())
        start = self.starts.pop(report.nodeid, float(getattr(report, "start", 0) or stop))
        after = stop + self.interval_ms / 1000.0
        if self.sampler is not None:
            self.sampler.sample_now()  # the state as the test ends: context and memory
        sources = self._sources(report)
        if not self.local:  # the sample that covers the window's end is on its way
            FEED.wait_past(after, sources, 2 * self.interval_ms / 1000.0 + SAMPLE_GRACE_S)
        found = evidence(report.nodeid, start, stop, FEED.window(sources, start, after), sources,
                         idle_mem_mb=FEED.first_memory(sources))
        verdict = judge(found, self.mode, report.passed)
        found = Evidence(**{**found.as_dict(), "verdict": verdict})
        self.found[report.nodeid] = found
        report.user_properties.extend(found.properties())
        if verdict == "failed":
            report.outcome = "failed"
            report.longrepr = _failure(report, found)
            self.failed += 1
        elif verdict == "warned":
            self._warn(report, found)
        self._record(found)

    def _warn(self, report: pytest.TestReport, found: Evidence) -> None:
        message = f"{IDLE_REASON}: {found.line()}"
        self.config.hook.pytest_warning_recorded.call_historic(kwargs={
            "warning_message": warnings.WarningMessage(
                GpuIdleWarning(message), GpuIdleWarning, report.location[0],
                (report.location[1] or 0) + 1),
            "when": "runtest", "nodeid": report.nodeid, "location": None})

    def _record(self, found: Evidence) -> None:
        folder = self.run_dir()
        if folder is None or not folder.is_dir():
            return
        with (folder / "gpu-evidence.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(found.as_dict(), separators=(",", ":")) + "\n")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A container run that passed, with tests failed here for idling, exits 1."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Each tier2 test's evidence; a run whose GPU stayed idle throughout is flagged."""
        if not self.found:
            return
        tr = terminalreporter
        tr.write_sep("-", f"hil: GPU evidence of tier2 tests (--hil-gpu-evidence={self.mode})")
        if self.sampler_note:
            tr.write_line(self.sampler_note)
        for nodeid, found in self.found.items():
            tr.write_line(f"{nodeid}: {found.line()}", red=found.state == "idle",
                          yellow=found.state == "unknown")
        folder = self.run_dir()
        if folder is not None:
            tr.write_line(f"evidence: {folder / 'gpu-evidence.jsonl'}")
        judged = sum(1 for f in self.found.values() if f.state != "unknown")
        if idle_throughout(FEED.all(), list(self.found.values())):
            tr.write_line(f"hil: the GPU stayed idle throughout this run: {judged} tier2 "
                          "test(s) ran and no sample showed GPU load or a CUDA context",
                          red=True, bold=True)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        """After the results are published (the session's own unconfigure): Allure."""
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.settings.allure_dir is not None and self.found:
            from hil.evidence.allure import annotate_folder

            annotate_folder(self.settings.allure_dir, self.found.values())


def register(config: pytest.Config, settings: HilSettings) -> None:
    """Register the plugin for a session that runs tests (not for ``--hil-plan``)."""
    if settings.plan:
        return
    mode, interval = resolve(config, settings.root)
    config.pluginmanager.register(GpuEvidence(config, settings, mode, interval),
                                  "hil-gpu-evidence")
