"""Secrets stay out of the files pytest-hil saves; the container still gets them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_compose import EXAMPLE, REPO, Project
from test_compose import target_toml as compose_target_toml
from test_docker_target import DOCKERFILE, REQUIREMENTS, run_dirs, target_toml

from conftest import IMAGE_REQUIREMENTS
from hil.config import parse_target
from hil.errors import ConfigError
from hil.redact import MASK, Redactor, redactor_for
from hil.sim import Rig

pytest_plugins = ["pytester"]

TOKEN = "tok-4f1c9a7e55"
DB_URL = "postgres://app:pw-91ab@db/app"


def test_env_redact_names_more_secrets_and_is_not_an_env_variable() -> None:
    spec = parse_target({"kind": "local", "tier": 1,
                         "env": {"DB_URL": DB_URL, "API_TOKEN": TOKEN, "MODE": "fast",
                                 "redact": ["DB_URL"]}}, "targets/t.toml", default_name="t")
    assert dict(spec.env) == {"DB_URL": DB_URL, "API_TOKEN": TOKEN, "MODE": "fast"}
    assert spec.redact == ("DB_URL",)
    masked = redactor_for(spec).data({
        "pytest_args": ["-k", f"not {TOKEN}", f"--url={DB_URL}"],
        "services": {"tests": {"environment": {"MY_KEY": "k-short", "MODE": "fast"},
                               "command": ["env", f"DB_PASSWORD={DB_URL}x", "API_KEY=abc"]}}})
    assert masked == {
        "pytest_args": ["-k", f"not {MASK}", f"--url={MASK}"],
        "services": {"tests": {"environment": {"MY_KEY": MASK, "MODE": "fast"},
                               "command": ["env", f"DB_PASSWORD={MASK}", f"API_KEY={MASK}"]}}}
    with pytest.raises(ConfigError, match=r"'env\.redact' must be an array of variable names"):
        parse_target({"kind": "local", "tier": 1, "env": {"redact": [1]}}, "t.toml",
                     default_name="t")


def test_short_values_are_not_masked_in_free_text() -> None:
    assert Redactor(["ab1"]).text("ab1 stays") == "ab1 stays"


def test_run_json_of_a_container_run_has_no_secret(pytester: pytest.Pytester, sim_rig: Rig,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (pytester.path / "targets").mkdir()
    (pytester.path / "targets" / "Dockerfile").write_text(DOCKERFILE)
    (pytester.path / "targets" / "requirements.txt").write_text(REQUIREMENTS)
    (pytester.path / "targets" / "box.toml").write_text(target_toml(
        sim_rig, f'[env]\nDB_URL = "{DB_URL}"\nredact = ["DB_URL"]\n'))
    monkeypatch.setenv("HIL_CI_TOKEN", TOKEN)
    pytester.makepyfile(test_it="import os\n\n\ndef test_env():\n"
                                f"    assert os.environ['DB_URL'] == {DB_URL!r}\n")
    res = pytester.runpytest_subprocess("--target=box", "-k", f"not {TOKEN}",
                                        f"--junit-prefix={DB_URL}", timeout=600)
    assert res.ret == 0, res.stdout.str()[-3000:]
    run_dir = run_dirs(pytester)[-1]
    saved = (run_dir / "run.json").read_text(encoding="utf-8")
    assert TOKEN not in saved and DB_URL not in saved
    assert json.loads(saved)["pytest_args"][-3:] == ["-k", f"not {MASK}",
                                                     f"--junit-prefix={MASK}"]


def test_the_compose_files_saved_in_the_run_folder_have_no_secret(sim_rig: Rig,
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "project"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, *EXAMPLE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = compose_target_toml("docker", sim_rig, tmp_path.name).replace(
        'service = "tests"', 'service = "tests"\nenv_file = "compose.env"')
    (root / "targets" / "box.toml").write_text(
        toml + f'[env]\nDB_URL = "{DB_URL}"\nredact = ["DB_URL"]\n', encoding="utf-8")
    (root / "compose.env").write_text(f"BROKER_TOKEN={TOKEN}\n", encoding="utf-8")
    project = Project(root, "docker", sim_rig)
    project.compose_file("      HIL_MQTT_BROKER: broker:1883\n",
                         "      HIL_MQTT_BROKER: broker:1883\n"
                         "      BROKER_TOKEN: ${BROKER_TOKEN}\n")
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n', encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    done = project.run("suites/compose", "-k", "not nothing")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    compose = project.last_run() / "compose"
    saved = {name: (compose / name).read_text(encoding="utf-8")
             for name in ("config.json", "override.json")}
    for name, text in saved.items():
        assert TOKEN not in text and DB_URL not in text, name
    assert json.loads(saved["config.json"])["services"]["tests"]["environment"][
        "BROKER_TOKEN"] == MASK
