"""The shipped CI files never run untrusted code on runners that reach the boards, and
pass user input to the shell as data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
CI_FILES = [*WORKFLOWS, REPO / "ci" / "gitlab-nightly.yml"]
#: Expressions whose value someone outside the project (or any dispatcher) chooses.
UNTRUSTED = re.compile(r"\$\{\{\s*(github\.event\.inputs\.|inputs\.|github\.head_ref|"
                       r"github\.event\.(pull_request|issue|comment|review|head_commit)\.)")
#: A line that hands such a value to a step as an environment variable (data).
ENV_LINE = re.compile(r"^\s+[A-Z_][A-Z0-9_]*:\s+\$\{\{[^}]*\}\}\s*$")


def _triggers(text: str) -> set[str]:
    block = re.search(r"(?ms)^on:\s*\n(.*?)^\S", text + "\nend")
    assert block, "no 'on:' block"
    return set(re.findall(r"(?m)^  ([a-z_]+):", block[1]))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_self_hosted_runners_never_run_pull_request_code(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if "self-hosted" in text:
        assert not _triggers(text) & {"pull_request", "pull_request_target"}, path.name
        assert re.search(r"(?m)^permissions:\s*\n\s+contents: read", text), path.name


def test_gitlab_runs_only_trusted_pipelines() -> None:
    text = (REPO / "ci" / "gitlab-nightly.yml").read_text(encoding="utf-8")
    sources = set(re.findall(r'\$CI_PIPELINE_SOURCE == "(\w+)"', text))
    assert sources and sources <= {"schedule", "web", "push"}


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_inputs_reach_the_shell_as_data_never_as_script(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if UNTRUSTED.search(line):
            assert ENV_LINE.match(line), f"{path.name}:{number}: {line.strip()}"


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_installs_are_pinned_by_the_lock(path: Path) -> None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if "pip install" in line:
            assert "-c requirements-dev.lock" in line, line
