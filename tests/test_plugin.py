"""The plugin on the local target: options, configuration errors, tiers, plan, exit codes, Allure."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from hil.tiers import detect_local_tier

pytest_plugins = ["pytester"]

ON_CPU_HOST = detect_local_tier().tier < 2
cpu_only = pytest.mark.skipif(not ON_CPU_HOST, reason="this host has a usable CUDA GPU")

SAMPLE = """
import os
import pytest

def test_cpu():
    assert os.environ["HIL_TIER"] in ("1", "2")

@pytest.mark.tier2
def test_gpu():
    pass

@pytest.mark.tier3
def test_airframe():
    pass
"""


def write_target(pytester: pytest.Pytester, name: str, body: str, folder: str = "targets") -> Path:
    path = pytester.path / folder / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "docker"\ntier = 1\ncolour = "red"\n',
         "targets/bad.toml: unknown key 'colour' (expected one of: compose, description, docker, env, kind, "
         "labgrid, name, preflight, ssh, tier, timeouts)"),
        ('kind = "docker"\ntier = "two"\n',
         "targets/bad.toml: key 'tier' must be an integer 1-3, got 'two'"),
        ('kind = "docker"\n', "targets/bad.toml: missing key 'tier' (the tier the target serves, 1-3)"),
        ('tier = 1\n', "targets/bad.toml: missing key 'kind' (one of: local, docker, ssh)"),
        ('kind = "vm"\ntier = 1\n',
         "targets/bad.toml: key 'kind' must be one of local, docker, ssh, got 'vm'"),
        ('kind = "docker"\ntier = 1\n[docker]\nruntime = 3\n',
         "targets/bad.toml: key 'docker.runtime' must be a string, got an integer 3"),
        ('kind = "docker"\ntier = 1\n[docker]\nshm = "1g"\n',
         "targets/bad.toml: unknown key 'docker.shm' (expected one of: build_args, build_network, "
         "context, dockerfile, engine, hash_files, memory, network, runtime, workdir)"),
        ('kind = "docker"\ntier = 1\n[timeouts]\nrun = -5\n',
         "targets/bad.toml: key 'timeouts.run' must be a positive number of seconds, got -5"),
        ('kind = "ssh"\ntier = 2\n[ssh]\nremote_dir = "x"\n',
         "targets/bad.toml: missing key 'ssh.host' (an ssh_config alias or host name) or "
         "'ssh.hosts' (a pool: an array of them)"),
        ('kind = "docker"\ntier = 1\n[ssh]\nhost = "x"\n',
         "targets/bad.toml: key 'ssh' is not allowed for kind 'docker' (only for: ssh)"),
        ('kind = "docker"\ntier = 1\nname = "other"\n',
         "targets/bad.toml: key 'name' is 'other' but must equal 'bad'"),
        ('kind = "docker"\ntier = 1\n[env]\nDEBUG = true\n',
         "targets/bad.toml: key 'env.DEBUG' must be a string, got a boolean True"),
        ('kind = "docker"\ntier = = 1\n',
         "targets/bad.toml: TOML syntax error: Invalid value (at line 2, column 8)"),
        ('kind = "ssh"\ntier = 1\n[ssh]\nhost = "b"\nremote_dir = "x"\n'
         '[docker]\nengine = "unix:///nowhere.sock"\n',
         "targets/bad.toml: key 'docker.engine' is not allowed for kind 'ssh' (only for: docker)"),
        ('kind = "ssh"\ntier = 1\n[ssh]\nhost = "b"\nremote_dir = "x"\n[docker]\ncontext = "c"\n',
         "targets/bad.toml: key 'docker.context' is not allowed for kind 'ssh' (only for: docker)"),
        ('kind = "docker"\ntier = 1\n[preflight]\nmin_free_mb = 99999999\n',
         "targets/bad.toml: key 'preflight' is not allowed for kind 'docker' (only for: ssh)"),
        ('kind = "docker"\ntier = 1\n[preflight]\nrequire_swap = true\n',
         "targets/bad.toml: key 'preflight' is not allowed for kind 'docker' (only for: ssh)"),
        ('kind = "docker"\ntier = 1\n[timeouts]\nlease = 5\n',
         "targets/bad.toml: key 'timeouts.lease' is not allowed for kind 'docker' (only for: ssh)"),
    ],
    ids=["unknown-key", "wrong-type", "missing-tier", "missing-kind", "unknown-kind",
         "wrong-type-nested", "unknown-nested-key", "negative-timeout", "ssh-without-host",
         "section-for-wrong-kind", "name-mismatch", "env-not-string", "toml-syntax",
         "engine-on-ssh", "context-on-ssh", "free-space-on-docker", "swap-on-docker",
         "lease-on-docker"],
)
def test_bad_configuration_is_a_usage_error_naming_file_and_key(
    pytester: pytest.Pytester, body: str, message: str
) -> None:
    write_target(pytester, "bad", body)
    pytester.makepyfile(test_a="def test_a(): pass")
    # A bad file fails its own target (the others stay usable): the session chooses it.
    result = pytester.runpytest_subprocess("--target=bad")
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_duplicate_target_name_is_refused(pytester: pytest.Pytester) -> None:
    write_target(pytester, "rig", 'kind = "docker"\ntier = 1\n')
    pytester.makepyprojecttoml('[tool.hil.targets.rig]\nkind = "docker"\ntier = 1\n')
    pytester.makepyfile(test_a="def test_a(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == 4
    result.stderr.fnmatch_lines([
        "ERROR: targets/rig.toml: duplicate target name 'rig' "
        "(already declared in pyproject.toml [tool.hil.targets.rig])"])


def test_unknown_target_lists_the_known_ones(pytester: pytest.Pytester) -> None:
    write_target(pytester, "colima", 'kind = "docker"\ntier = 1\n')
    write_target(pytester, "jetson", 'kind = "ssh"\ntier = 2\n[ssh]\nhost = "j"\nremote_dir = "x"\n')
    pytester.makepyfile(test_a="def test_a(): pass")
    result = pytester.runpytest_subprocess("--target=nosuch")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: unknown target 'nosuch'; known targets: colima, jetson, local (*"])


def test_hil_target_variable_chooses_the_default_target(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIL_TARGET", "ghost")
    pytester.makepyfile(test_a="def test_a(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: unknown target 'ghost'; known targets: local (*"])


def test_targets_folder_option_replaces_the_inventory(pytester: pytest.Pytester) -> None:
    write_target(pytester, "bench", 'kind = "local"\ntier = 1\n', folder="lab")
    pytester.makepyfile(test_a="import os\ndef test_a(): assert os.environ['HIL_TARGET'] == 'bench'")
    result = pytester.runpytest_subprocess("--hil-targets=lab", "--target=bench")
    assert result.ret == 0
    result.assert_outcomes(passed=1)


def test_targets_in_pyproject_are_found(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.hil.targets.bench]\nkind = "local"\ntier = 1\n')
    pytester.makepyfile(test_a="import os\ndef test_a(): assert os.environ['HIL_TARGET'] == 'bench'")
    result = pytester.runpytest_subprocess("--target=bench")
    result.assert_outcomes(passed=1)


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SAMPLE)
    result = pytester.runpytest_subprocess("--strict-markers", "--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.tier1: needs any host CPU*",
                                 "@pytest.mark.tier2: needs CUDA GPU*"])


@cpu_only
def test_tier2_test_is_skipped_on_a_cpu_host_with_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SAMPLE)
    result = pytester.runpytest_subprocess("--strict-markers", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] test_a.py:*: tier2 (CUDA GPU) test; target 'local' serves tier 1",
        "SKIPPED [[]1[]] test_a.py:*: tier3 (real airframe hardware) test; target 'local' serves tier 1",
    ])
    assert result.ret == 0


def test_tier_of_a_declared_target_names_the_target(pytester: pytest.Pytester) -> None:
    write_target(pytester, "bench", 'kind = "local"\ntier = 1\n')
    pytester.makepyfile(test_a=SAMPLE)
    result = pytester.runpytest_subprocess("--target=bench", "-rs")
    result.stdout.fnmatch_lines(["*tier2 (CUDA GPU) test; target 'bench' serves tier 1"])


def test_plan_prints_each_test_and_runs_nothing(pytester: pytest.Pytester) -> None:
    write_target(pytester, "bench", 'kind = "local"\ntier = 1\n')
    pytester.makepyfile(test_a=SAMPLE + "\ndef test_would_fail():\n    assert False\n")
    result = pytester.runpytest_subprocess("--target=bench", "--hil-plan")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "hil plan: target 'bench' (local, serves tier 1)",
        "  RUN  test_a.py::test_cpu -> bench (tier1)",
        "  SKIP test_a.py::test_gpu: tier2 (CUDA GPU) test; target 'bench' serves tier 1",
        "  SKIP test_a.py::test_airframe: tier3 (real airframe hardware) test; target 'bench' serves tier 1",
        "  RUN  test_a.py::test_would_fail -> bench (tier1)",
        "hil plan: 2 to run, 2 skipped; nothing was run",
    ])
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("def test_ok(): pass", 0),
        ("def test_bad(): assert 0", 1),
        ("import nosuchmodule_xyz\ndef test_x(): pass", 2),
        ("", 5),
    ],
    ids=["passed", "failed", "collection-error", "no-tests"],
)
def test_pytest_exit_codes_pass_through(pytester: pytest.Pytester, source: str, code: int) -> None:
    pytester.makepyfile(test_a=source)
    result = pytester.runpytest_subprocess()
    assert result.ret == code


def test_usage_error_exit_code_passes_through(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_ok(): pass")
    result = pytester.runpytest_subprocess("--no-such-option")
    assert result.ret == 4


@cpu_only
def test_required_tier_not_served_is_an_infrastructure_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_ok(): pass")
    result = pytester.runpytest_subprocess("--hil-require-tier=2")
    assert result.ret == 16
    result.stderr.fnmatch_lines([
        "*hil: target 'local': serves tier 1 (no CUDA device*) but --hil-require-tier 2 was given"])
    result.stdout.no_fnmatch_line("*passed*")


@cpu_only
def test_declared_gpu_target_without_cuda_is_unhealthy_not_skipped(pytester: pytest.Pytester) -> None:
    write_target(pytester, "gpubox", 'kind = "local"\ntier = 2\n')
    pytester.makepyfile(test_a=SAMPLE)
    result = pytester.runpytest_subprocess("--target=gpubox")
    assert result.ret == 16
    result.stderr.fnmatch_lines(
        ["*hil: target 'gpubox': declares tier2 (CUDA GPU) but no CUDA device is usable here*"])


def _results(folder: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in folder.glob("*-result.json")]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_allure_results_carry_the_target_and_environment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SAMPLE)
    result = pytester.runpytest_subprocess()
    assert result.ret == 0
    folder = pytester.path / "reports" / "allure-results"
    results = _results(folder)
    assert {r["name"] for r in results} == {"test_cpu", "test_gpu", "test_airframe"}
    for r in results:
        assert {"name": "target", "value": "'local'"} in r["parameters"], r["name"]
    env = dict(line.split("=", 1) for line in
               (folder / "environment.properties").read_text().splitlines())
    assert env["target"] == "local"
    assert env["tier"] in ("1", "2")
    assert env["python"].count(".") == 2
    assert env["pytest.version"] == pytest.__version__
    assert "host" in env and "git.commit" in env


def test_allure_results_are_cleaned_per_run_unless_kept(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_one(): pass")
    pytester.runpytest_subprocess()
    pytester.makepyfile(test_a="def test_two(): pass")
    pytester.runpytest_subprocess()
    folder = pytester.path / "reports" / "allure-results"
    assert {r["name"] for r in _results(folder)} == {"test_two"}
    pytester.makepyfile(test_a="def test_three(): pass")
    pytester.runpytest_subprocess("--hil-keep-results")
    assert {r["name"] for r in _results(folder)} == {"test_two", "test_three"}


def test_alluredir_option_moves_the_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_one(): pass")
    pytester.runpytest_subprocess("--alluredir=elsewhere")
    assert {r["name"] for r in _results(pytester.path / "elsewhere")} == {"test_one"}
    assert not (pytester.path / "reports" / "allure-results").exists()


def test_no_allure_option_writes_no_results_even_where_alluredir_points(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_one(): pass")
    assert pytester.runpytest_subprocess("--alluredir=elsewhere", "--hil-no-allure").ret == 0
    assert _results(pytester.path / "elsewhere") == []
    assert not (pytester.path / "reports" / "allure-results").exists()


def test_local_target_runs_without_docker_or_fabric(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="""
        import sys
        def test_nothing_heavy_imported():
            heavy = {"docker", "fabric", "paramiko", "torch", "hil.session.controller"}
            assert not heavy & set(sys.modules), heavy & set(sys.modules)
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_a_nested_in_process_session_leaves_allure_to_the_enclosing_one(pytester: pytest.Pytester) -> None:
    # The enclosing session (a subprocess) records Allure; the session its test runs
    # in-process must not register a second allure-pytest listener, which would
    # receive the outer session's fixture events and fail on them at teardown.
    pytester.makepyfile(test_outer='''
        import pytest

        @pytest.fixture
        def inner(pytester):
            config = pytester.parseconfigure("-p", "no:cacheprovider")
            yield config

        def test_nested(inner):
            assert inner.option.allure_report_dir is None
    ''')
    result = pytester.runpytest_subprocess("-p", "pytester", "-p", "no:cacheprovider",
                                           f"--alluredir={pytester.path / 'allure'}")
    result.assert_outcomes(passed=1)
    assert list((pytester.path / "allure").glob("*-result.json"))


def test_a_monorepo_subproject_finds_the_targets_at_the_repository_top(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (pytester.path / ".git").mkdir()
    write_target(pytester, "bench", 'kind = "local"\ntier = 1\n')
    sub = pytester.path / "packages" / "app"
    sub.mkdir(parents=True)
    (sub / "pytest.ini").write_text("[pytest]\n")
    (sub / "test_app.py").write_text("def test_ok():\n    pass\n")
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess("--target=bench", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["hil target: bench (local, serves tier 1*"])
    missing = pytester.runpytest_subprocess("--target=nowhere", "-p", "no:cacheprovider")
    assert missing.ret == 4
    assert (f"unknown target 'nowhere'; known targets: bench, local (looked for pyproject.toml "
            f"[tool.hil] and targets/*.toml in: {sub}/, {sub.parent}/, {pytester.path}/)"
            ) in missing.stderr.str()


def test_the_search_stops_at_the_repository_top(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    outer = pytester.path
    write_target(pytester, "outside", 'kind = "local"\ntier = 1\n')
    repo = outer / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    (repo / "test_x.py").write_text("def test_ok():\n    pass\n")
    monkeypatch.chdir(repo)
    result = pytester.runpytest_subprocess("--target=outside", "-p", "no:cacheprovider")
    assert result.ret == 4
    assert (f"unknown target 'outside'; known targets: local (looked for pyproject.toml "
            f"[tool.hil] and targets/*.toml in: {repo}/)") in result.stderr.str()
