"""How the user's pytest arguments reach the container's pytest."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.session.args import remote_args

ROOT = Path("/home/me/project")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["suites"], ["suites"]),
        (["-k", "onnx and not slow", "-x"], ["-k", "onnx and not slow", "-x"]),
        (["suites/t.py::test_p[with space]", "suites/t.py::test_q[br[a]ck]"],
         ["suites/t.py::test_p[with space]", "suites/t.py::test_q[br[a]ck]"]),
        (["--target", "colima", "-v"], ["-v"]),
        (["--target=colima", "--maxfail=2"], ["--maxfail=2"]),
        (["--hil-rebuild", "--hil-lease-timeout", "30", "-m", "tier1"], ["-m", "tier1"]),
        (["--junitxml", "out.xml", "--alluredir=a", "--clean-alluredir", "-q"], ["-q"]),
        (["/home/me/project/suites/tier1"], ["/src/suites/tier1"]),
        (["/home/me/project/suites/t.py::test_x"], ["/src/suites/t.py::test_x"]),
        (["--rootdir", "/home/me/project"], ["--rootdir", "/src"]),
        (["--ignore=/home/me/project/suites/tier2"], ["--ignore=/src/suites/tier2"]),
        (["/elsewhere/tests"], ["/elsewhere/tests"]),
        (["-p", "no:randomly", "--lf"], ["-p", "no:randomly", "--lf"]),
    ],
    ids=["path", "k-expression", "ids-with-spaces-and-brackets", "target-value", "target-equals",
         "hil-options", "host-outputs", "absolute-path", "absolute-node-id", "rootdir", "ignore",
         "outside-checkout", "plugins-and-lf"],
)
def test_remote_args(given: list[str], expected: list[str]) -> None:
    assert remote_args(given, ROOT, ROOT) == expected
