"""The run folder (``reports/runs/<run-id>/``): ids, atomic writes, publishing results."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from hil.errors import HilError
from hil.own import check_own, is_own, mark_own, remove_own


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (fast for thousands of results), else copy it."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def set_aside(folder: Path) -> list[Path]:
    """Rename ``folder`` to a hidden sibling; returns the set-aside folders to remove later.

    Those of earlier sessions that ended before removing theirs are included.
    """
    check_own(folder, "the Allure results folder")
    aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except OSError:  # a mount point, say: remove it in place
        remove_own(folder, "the Allure results folder")
    return sorted(p for p in folder.parent.glob(f".{folder.name}.old-*") if is_own(p))


def publish_results(fetched: Path, dest: Path, stale: list[Path]) -> None:
    """Link a run's Allure results into ``dest``, then remove the set-aside old results."""
    try:
        entries = list(os.scandir(fetched))
    except OSError:
        entries = []
    for entry in entries:
        if entry.is_file():
            link_or_copy(Path(entry.path), dest / entry.name)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def new_run_id(target: str) -> str:
    """``20261122-103012.345-colima-1a2b``: sorts in start order, unique, names the target.

    Milliseconds: two runs a second apart (quick ones) still sort in the order they ran.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}-{target}-{uuid.uuid4().hex[:4]}"


def fresh_results(allure_dir: Path, keep: bool, target: str, error: HilError | None) -> list[Path]:
    """Ready the Allure results folder for a session's results; the earlier ones set aside.

    Unless ``keep``, the last run's results are moved out of the way (removed
    later, off the session's path); an infrastructure fault gets its broken result.
    """
    stale = set_aside(allure_dir) if not keep and allure_dir.exists() else []
    mark_own(allure_dir)
    if error is not None:
        # Here, not at the top: a local run (the GPU evidence's run folder) needs no allure-commons.
        from hil.report.allure import write_infrastructure_result

        write_infrastructure_result(allure_dir, target, error.kind, int(error.exit_code),
                                    str(error), trace=error.details(40))
    return stale


def allure_env(allure_dir: Path | None) -> dict[str, str]:
    """What a container's worker is told about Allure: nothing to record where the session
    publishes none (``--hil-no-allure``, no allure-pytest here), so the run folder gets none."""
    return {} if allure_dir is not None else {"HIL_ALLURE_RESULTS": "off"}


def run_allure_dir(allure_dir: Path | None, out: Path) -> Path | None:
    """Where a member's streamed Allure results go in its run folder ``out`` (None: nowhere,
    whatever the container sends)."""
    return out / "allure-results" if allure_dir is not None else None


def register_run_junit(config: pytest.Config, run_dir: Path) -> None:
    """The run's own ``junit.xml`` in ``run_dir``, written here from the streamed reports
    (with the project's junit ini settings), so it exists also when a container dies."""
    from _pytest.junitxml import LogXML

    config.pluginmanager.register(LogXML(
        str(run_dir / "junit.xml"), None,
        suite_name=config.getini("junit_suite_name"), family=config.getini("junit_family"),
        report_duration=config.getini("junit_duration_report"),
        logging=config.getini("junit_logging"),
        log_passing_tests=config.getini("junit_log_passing_tests"),
    ), "hil-run-junitxml")
