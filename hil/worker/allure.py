"""Allure inside the target: labels, ``environment.properties`` and a faster results writer."""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest


def allure_target_parameter(target: str) -> None:
    try:
        import allure
    except ImportError:
        return
    try:
        allure.dynamic.parameter("target", target)
        board = os.environ.get("HIL_BOARD")
        if board:  # a board of a pool: every result names it
            allure.dynamic.parameter("board", board)
    except Exception:  # no Allure test context (allure-pytest inactive)
        return


def write_environment(folder: Path, values: dict[str, str]) -> None:
    """Write Allure's ``environment.properties`` (keys prefixed by nothing, one per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}={v}".replace("\n", " ") for k, v in sorted(values.items())]
    (folder / "environment.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_environment(text: str) -> dict[str, str]:
    """``key=value`` lines -> dict (blank lines and ``#`` / ``!`` comments ignored, as in Java properties)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def result_dict(item: Any) -> dict[str, Any]:
    """An Allure result or container as allure-commons serializes it.

    What ``AllureFileLogger`` writes: ``attr.asdict`` of the model, falsy
    values other than ``False`` left out (attrs comes with allure-commons).
    """
    import attr

    data: dict[str, Any] = attr.asdict(item, filter=_kept)
    return data


def _kept(_: Any, value: Any) -> bool:
    return bool(value) or value is False


#: Receives each Allure result instead of a file: (file name, result as a dict, indent).
AllureSink = Callable[[str, "dict[str, Any]", "int | None"], None]


def write_allure_result(folder: str | Path, filename: str, data: dict[str, Any],
                        indent: int | None) -> None:
    """One Allure result file, as allure-commons writes it, whole or not at all."""
    final = os.path.join(folder, filename)
    with open(final + ".tmp", "wb") as file:
        file.write(json.dumps(data, indent=indent, ensure_ascii=False).encode("utf-8"))
    os.replace(final + ".tmp", final)


#: allure-commons' hook marker (its plugin manager's project name), without importing it.
allure_hookimpl = pluggy.HookimplMarker("allure")


class AllureResultsLogger:
    """An allure-commons logger plugin: what ``AllureFileLogger`` writes, faster or elsewhere.

    allure-commons serializes each result with ``json.dump`` into a text file,
    which runs the pure-Python encoder chunk by chunk (about half of Allure's
    cost per test); ``json.dumps`` with the same options gives the same text in
    one call.  A file is still written whole, under a temporary name, and
    renamed at once, so a run killed mid-way keeps every finished result.  With
    a ``sink``, results and containers go there instead (the controller writes
    them: see :meth:`EventStream.send_allure`).  Attachments are written by an
    ``AllureFileLogger`` of our own, through its public hook methods.
    """

    def __init__(self, folder: str, sink: AllureSink | None = None) -> None:
        from allure_commons.logger import AllureFileLogger

        self.folder = folder
        self.sink = sink
        self.files: Any = AllureFileLogger(folder)  # type: ignore[no-untyped-call]

    def _item(self, item: Any) -> None:
        from allure_commons.logger import INDENT

        indent = INDENT if os.environ.get("ALLURE_INDENT_OUTPUT") else None
        filename = item.file_pattern.format(prefix=uuid.uuid4())
        data = result_dict(item)
        if self.sink is not None:
            self.sink(filename, data, indent)
        else:
            write_allure_result(self.folder, filename, data, indent)

    @allure_hookimpl
    def report_result(self, result: Any) -> None:
        self._item(result)

    @allure_hookimpl
    def report_container(self, container: Any) -> None:
        self._item(container)

    @allure_hookimpl
    def report_attached_file(self, source: Any, file_name: str) -> None:
        self.files.report_attached_file(source, file_name)

    @allure_hookimpl
    def report_attached_data(self, body: Any, file_name: str) -> None:
        self.files.report_attached_data(body, file_name)


def record_allure(config: pytest.Config, folder: str, sink: AllureSink | None = None) -> bool:
    """Record Allure results into ``folder`` (or ``sink``); False without allure-pytest.

    What allure-pytest's ``--alluredir`` sets up (its listener and a file
    logger), with :class:`AllureResultsLogger` as the logger: allure-commons'
    plugin hooks are its public way to receive results.
    """
    try:
        import allure_commons
        from allure_pytest.listener import AllureListener
    except ImportError:
        return False
    listener = AllureListener(config)
    config.pluginmanager.register(listener, "allure_listener")
    for plugin in (listener, AllureResultsLogger(folder, sink)):
        allure_commons.plugin_manager.register(plugin)
        config.add_cleanup(functools.partial(allure_commons.plugin_manager.unregister, plugin))
    return True


