"""The evidence written into the run's Allure results, once the results are all there.

One place for every target: allure-pytest writes the ``local`` target's
results in this process, a container's come back from the target; either way
each tier2 test's result file gets, after the session, its evidence as
parameters, ``gpu: idle`` as a label when it was warned or failed, and the
failure (status and message) when it was failed.  A result is matched to its
test by allure-pytest's ``fullName`` (made from the node id) and by its time
span overlapping the test's window, which tells parametrized cases apart.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hil.evidence.verdict import IDLE_LABEL, IDLE_REASON, Evidence

#: A result file larger than this is not an allure-pytest test result; it is left alone.
MAX_RESULT_BYTES = 8 << 20


def full_name(nodeid: str) -> str:
    """allure-pytest's ``fullName`` of a test: ``pkg.module[.Class]#function``."""
    parts = nodeid.split("::")
    package = parts[0].rsplit(".", 1)[0].replace("/", ".")
    cls = f".{parts[-2]}" if len(parts) > 2 else ""
    return f"{package}{cls}#{parts[-1].split('[')[0]}"


def parameters(found: Evidence) -> list[tuple[str, str]]:
    """The Allure parameters of a test's evidence."""
    props = dict(found.properties())
    return [("gpu peak load %", props["gpu_peak_load_pct"]),
            ("gpu peak memory MiB", props["gpu_peak_memory_mb"]),
            ("gpu CUDA context", props["gpu_cuda_context"])]


def annotate(result: dict[str, Any], found: Evidence) -> None:
    """Add ``found`` to one Allure result (a dict as allure-commons writes it)."""
    params = result.setdefault("parameters", [])
    if isinstance(params, list):
        names = {p.get("name") for p in params if isinstance(p, dict)}
        params.extend({"name": n, "value": v} for n, v in parameters(found) if n not in names)
    if found.verdict in ("warned", "failed"):
        labels = result.setdefault("labels", [])
        label = {"name": IDLE_LABEL[0], "value": IDLE_LABEL[1]}
        if isinstance(labels, list) and label not in labels:
            labels.append(label)
    if found.verdict == "failed" and result.get("status") == "passed":
        result["status"] = "failed"
        result["statusDetails"] = {"message": IDLE_REASON, "trace": found.line()}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        return None
    with contextlib.suppress(ValueError):
        found = json.loads(data)
        return found if isinstance(found, dict) else None
    return None


def _write(path: Path, result: Mapping[str, Any]) -> None:
    # In place, not replaced: the run folder's copy is a hard link of this file.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)


def _overlaps(result: Mapping[str, Any], found: Evidence) -> bool:
    start, stop = result.get("start"), result.get("stop")
    if not isinstance(start, (int, float)) or not isinstance(stop, (int, float)):
        return True
    # Allure's times are milliseconds; a millisecond of slack for its rounding.
    return start - 1 <= found.stop * 1000 and stop + 1 >= found.start * 1000


def annotate_folder(folder: Path, evidence: Iterable[Evidence]) -> int:
    """Annotate the results in ``folder`` of each test in ``evidence``; how many were."""
    by_name: dict[str, list[Evidence]] = {}
    for found in evidence:
        by_name.setdefault(full_name(found.nodeid), []).append(found)
    if not by_name or not folder.is_dir():
        return 0
    done = 0
    for path in sorted(folder.glob("*-result.json")):
        result = _read(path)
        if result is None or result.get("fullName") not in by_name:
            continue
        match = [f for f in by_name[str(result["fullName"])] if _overlaps(result, f)]
        if len(match) != 1:
            continue  # none, or not told apart: left as written
        annotate(result, match[0])
        with contextlib.suppress(OSError):
            _write(path, result)
            done += 1
    return done
