"""What a controller session leaves behind: the run folder's record, the published Allure
results and the terminal summary.

``run.json`` (the session, each member's image, code, phases and fault),
``timings.json`` (the phases: the member's own for a run of one member) and
``hil.log``; the ``hil:`` section of pytest's terminal summary.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hil.backends.base import PREPARE_PHASES
from hil.redact import redactor_for
from hil.session.runfolder import fresh_results, publish_results

if TYPE_CHECKING:
    from hil.session.controller import Controller

#: The phases of a run of one member, in the order the summary shows them.
PHASES = ("preflight", *PREPARE_PHASES, "container start", "tests", "fetch")


def write_record(ctl: Controller) -> None:
    """``hil.log``, ``timings.json`` and ``run.json`` of the session."""
    run_dir = ctl.run_dir
    if ctl.log:
        (run_dir / "hil.log").write_text("\n".join(ctl.log) + "\n", encoding="utf-8")
    first = ctl.members[0] if ctl.members else None
    timings = dict(first.timings) if first is not None and ctl.single else ctl.timings
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=1), encoding="utf-8")
    record: dict[str, Any] = {
        "target": ctl.name, "kind": ctl.layout.specs[0].kind if ctl.single else "pool",
        "tier": ctl.settings.tier, "run_id": ctl.run_id, "exit_code": ctl.exitstatus,
        "started": ctl.started, "finished": time.time(), "timings": ctl.timings,
        "members": {m.name: {"image": m.image, "code": m.code, "seconds": m.seconds,
                             "phases": m.timings,
                             "quarantined": str(m.quarantined) if m.quarantined else None,
                             "error": str(m.error) if m.error else None}
                    for m in ctl.members}}
    if first is not None and first.plan is not None:
        feeder = first.feeder
        record.update(image=first.image, pytest_args=list(first.plan.pytest_args),
                      remote=(feeder.hello if feeder is not None else None) or {},
                      stray_output=feeder.stray[-50:] if feeder is not None else [])
    # Secrets (a token passed as a pytest option, say) stay out of the saved file.
    for spec in ctl.layout.specs:  # every member's [env] secrets (routed targets differ)
        record = redactor_for(spec).data(record)
    (run_dir / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


def publish(ctl: Controller) -> threading.Thread | None:
    """Put the members' Allure results (and an infrastructure fault's) in the results
    folder, off the session's path (thousands of links: unconfigure waits for it)."""
    allure_dir = ctl.settings.allure_dir
    if allure_dir is None:
        return None
    stale = fresh_results(allure_dir, ctl.settings.keep_results, ctl.name, ctl.error)
    folders = [m.out / "allure-results" for m in [*ctl.members, *ctl.movers]]

    def run() -> None:
        for folder in folders:
            publish_results(folder, allure_dir, [])
        publish_results(Path(os.devnull), allure_dir, stale)

    publisher = threading.Thread(target=run, name="hil-publish-results", daemon=True)
    publisher.start()
    return publisher


def terminal_summary(ctl: Controller, tr: Any) -> None:
    """The ``hil:`` section: phases (one member) or each member's counts, the policies'
    lines, where the results are, the infrastructure fault."""
    tr.write_sep("-", f"hil: {'pool ' if ctl.layout.pool else ''}{ctl.name}")
    if ctl.single and ctl.members:
        timings = ctl.members[0].timings
        shown = [f"{name} {timings[name]:.2f}s" for name in PHASES if name in timings]
        if shown:
            tr.write_line("phases: " + " | ".join(shown))
    else:
        _member_lines(ctl, tr)
    for policy_lines in ctl.summary_lines:
        for text, markup in policy_lines(ctl):
            tr.write_line(text, **markup)
    tr.write_line(f"results: {os.path.relpath(ctl.run_dir)}")
    if ctl.settings.allure_dir is not None:
        tr.write_line(f"allure results: {os.path.relpath(ctl.settings.allure_dir)}")
    if ctl.error is not None:
        tr.write_line(f"infrastructure fault [{ctl.error.kind}] "
                      f"(exit {int(ctl.error.exit_code)}): {ctl.error}", red=True)


def _member_lines(ctl: Controller, tr: Any) -> None:
    for member in ctl.members:
        if member.quarantined is not None:
            tr.write_line(f"{member.name}: quarantined [{member.quarantined.kind}]: "
                          f"{member.quarantined.message}", yellow=True)
            continue
        counts: dict[str, int] = {}
        for outcome in member.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tests"
        text = f"{member.name}: {len(member.outcomes)} test(s) ({shown}) in {member.seconds:.2f}s"
        if member.lost:
            text += f"; lost mid-run {member.lost}"
        if member.error is not None:
            text += f"; [{member.error.kind}] {member.error.message}"
        tr.write_line(text, red=member.error is not None)
    for member in ctl.members:
        for nodeid, outcome in member.outcomes.items():
            if outcome == "failed":
                tr.write_line(f"FAILED {nodeid} on {ctl.layout.word} {member.name}", red=True)


__all__ = ["PHASES", "publish", "terminal_summary", "write_record"]
