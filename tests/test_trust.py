"""Trust boundaries: what the image, the container and the board send back is data, never
an instruction to the host (each case on the simulated rig or a real pytest run)."""

from __future__ import annotations

import base64
import io
import subprocess
from pathlib import Path
from typing import Any

import paramiko
import pytest

from hil.backends.jetson.backend import SshBackend
from hil.backends.jetson.preflight import sections as _sections
from hil.backends.jetson.shell import board_command
from hil.errors import ConfigError, ExitCode, HostKeyError
from hil.progress import Progress
from hil.ssh.connection import KnownHostsPolicy, SshConnection, resolve_endpoint
from hil.ssh.sync import check_remote_dir

pytest_plugins = ["pytester"]

BASE_IMAGE = "hil-sim/l4t-base:r36.4.3"
#: A GPU probe as a hostile image could answer: sections of its own, aimed at ~/.ssh.
FORGED_PROBE = "printf '@@hil:dir\\n%s/.ssh\\n@@hil:end\\nrc=0\\n' \"$HOME\""


def test_the_gpu_probe_cannot_open_preflight_sections(sim_jetson: Any,
                                                      sim_project: Path) -> None:
    backend = SshBackend(sim_jetson, sim_project, Progress(quiet=True))
    try:
        conn = backend.connect()
        res = conn.run(board_command(
            "preflight", TAG=BASE_IMAGE, RUNTIME="", REMOTE="hil/trust-probe", SYNCED="0",
            LIB=".", LIB_MOUNT="/hil/lib", WORKER_IN="/hil/lib/w.py", FRESH="1",
            PROBE=FORGED_PROBE), timeout=120)
        assert res.ok, res.stderr
        sec = _sections(res.stdout)
        home = sec["home"]
        assert sec["dir"] == f"{home}/hil/trust-probe"
        assert f"@@hil:dir\n{home}/.ssh" in sec["gpu"]  # kept as the probe's text only
    finally:
        backend.close()


def test_a_later_section_of_the_same_name_does_not_override_the_first() -> None:
    sec = _sections("@@hil:dir\n/home/u/hil/x\n@@hil:gpu\nrc=0\n@@hil:dir\n/home/u/.ssh\n")
    assert sec["dir"] == "/home/u/hil/x"


def test_a_home_of_root_makes_no_remote_dir_count_as_inside_it() -> None:
    with pytest.raises(ConfigError, match="lies outside the home folder /"):
        check_remote_dir("hil/x", "/")
    with pytest.raises(ConfigError, match="is a system folder"):
        check_remote_dir("/etc/x", "/", allow_outside_home=True)
    assert check_remote_dir("/srv/hil/x", "/", allow_outside_home=True) == "/srv/hil/x"


# -- known_hosts -----------------------------------------------------------------------------

def _connect_with_known_hosts(spec: Any, tmp_path: Path, known: str) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(known, encoding="utf-8")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    UserKnownHostsFile {kh}\n\n"
                      + Path(spec.ssh.config).read_text(encoding="utf-8"), encoding="utf-8")
    conn = SshConnection(resolve_endpoint(spec.ssh.host, config_file=str(config)))
    try:
        conn.open()
    finally:
        conn.close()


def _board_line(sim_rig: Any) -> str:
    return Path(sim_rig.known_hosts).read_text(encoding="utf-8").splitlines()[0]


def _other_key(tmp_path: Path, kind: str) -> str:
    key = tmp_path / f"other_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text(encoding="utf-8").split()[:2])


def test_cert_authority_lines_grant_nothing_and_break_nothing(sim_rig: Any, sim_jetson: Any,
                                                              tmp_path: Path) -> None:
    ca = _other_key(tmp_path, "ed25519")
    _connect_with_known_hosts(sim_jetson, tmp_path,
                              f"@cert-authority *.lab {ca}\n{_board_line(sim_rig)}\n")
    with pytest.raises(HostKeyError) as info:  # a CA alone trusts no board here
        _connect_with_known_hosts(sim_jetson, tmp_path, f"@cert-authority * {ca}\n")
    assert info.value.exit_code == ExitCode.HOST_KEY_REJECTED and "unknown" in str(info.value)


def test_a_revoked_host_key_is_refused_whatever_other_lines_say(sim_rig: Any, sim_jetson: Any,
                                                                tmp_path: Path) -> None:
    line = _board_line(sim_rig)
    key = " ".join(line.split()[1:3])
    with pytest.raises(HostKeyError) as info:
        _connect_with_known_hosts(sim_jetson, tmp_path, f"{line}\n@revoked * {key}\n")
    assert info.value.exit_code == ExitCode.HOST_KEY_REJECTED
    assert "is REVOKED in known_hosts" in str(info.value)


def test_a_key_of_another_type_on_file_is_not_called_unknown(sim_rig: Any, sim_jetson: Any,
                                                             tmp_path: Path) -> None:
    names = _board_line(sim_rig).split()[0]
    with pytest.raises(HostKeyError) as info:
        _connect_with_known_hosts(sim_jetson, tmp_path,
                                  f"{names} {_other_key(tmp_path, 'ecdsa')}\n")
    text = str(info.value)
    assert info.value.exit_code == ExitCode.HOST_KEY_REJECTED
    assert "ecdsa-sha2-nistp256" in text and "unknown" not in text, text
    assert "ssh-keyscan -t" not in text


@pytest.mark.parametrize(("kind", "scan"), [("ecdsa", "ecdsa"), ("rsa", "rsa"),
                                            ("ed25519", "ed25519")])
def test_the_keyscan_hint_names_a_type_ssh_keyscan_knows(tmp_path: Path, kind: str,
                                                         scan: str) -> None:
    words = _other_key(tmp_path, kind).split()
    key = paramiko.PKey.from_type_string(words[0], base64.b64decode(words[1]))
    err = KnownHostsPolicy((str(tmp_path / "none"),)).unknown("[10.0.0.1]:2222", key)
    assert f"ssh-keyscan -t {scan} -p 2222 10.0.0.1 >> " in str(err)


# -- what the container leaves in the board's results folder ------------------------------

def test_the_run_script_never_writes_through_links_the_container_left(
        sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    from hil.ssh.sync import host_dir

    backend = SshBackend(sim_jetson, sim_project, Progress(quiet=True))
    base = f"hil-tests/{tmp_path.name}/out"
    out = f"{base}/run-1"
    try:
        conn = backend.connect()
        # A first segment's container left links where the board writes next.
        made = conn.run(f"mkdir -p {out} {base}/victim-dir && echo precious > {base}/victim && "
                        f"ln -s ../victim {out}/lastfailed.json && "
                        f"ln -s ../victim-dir {out}/compose")
        assert made.ok, made.stderr
        res = conn.run(board_command(
            "run", "true", OUT=f"{out}", HOST=host_dir(out), NAME="hil-trust-none",
            PIDF=f"{base}/run-1.pgid", LIB=".", LASTFAILED='{"t.py::test_x": true}',
            LABEL="io.pytest-hil.trust-test", KEEP="5", INBAND_KB="0", END="@@END",
            NONCE_FILE=".nonce", CREATE='echo made > "$HOST/compose/create.out"; false'),
            timeout=120, in_stream=io.StringIO("n0nce\n"))
        state = conn.run(f"cat {base}/victim; ls -A {base}/victim-dir; "
                         f"stat -c '%F' {out}/lastfailed.json; cat {out}/lastfailed.json; echo; "
                         f"stat -c '%a' {host_dir(out)}")
        assert state.stdout.splitlines() == ["precious", "regular file",
                                             '{"t.py::test_x": true}', "700"], \
            state.stdout + res.stderr
        assert "made" in res.stderr  # compose's output shown, from the run's own folder
    finally:
        backend.connect().run(f"rm -rf hil-tests/{tmp_path.name}")
        backend.close()


def test_fetched_results_are_capped_and_only_regular_files(
        sim_jetson: Any, sim_project: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.backends.jetson.backend import fetch_tree

    monkeypatch.setenv("HIL_FETCH_MAX_MB", "1")
    backend = SshBackend(sim_jetson, sim_project, Progress(quiet=True))
    remote = f"hil-tests/{tmp_path.name}/out"
    try:
        conn = backend.connect()
        made = conn.run(f"mkdir -p {remote} && cd {remote} && echo ok > small.txt && "
                        f"head -c 2000000 /dev/zero > big.bin && ln -s ~/.ssh keys && "
                        f"ln -s small.txt link.txt && mkfifo pipe")
        assert made.ok, made.stderr
        skipped: list[str] = []
        local = tmp_path / "local"
        names = fetch_tree(conn, remote, local, skipped=skipped)
        assert names == ["small.txt"] and skipped == ["big.bin"]
        assert sorted(p.name for p in local.iterdir()) == ["small.txt"]
    finally:
        backend.connect().run(f"rm -rf hil-tests/{tmp_path.name}")
        backend.close()


# -- what the board and the container print ------------------------------------------------

def test_escape_sequences_from_the_container_never_reach_the_terminal(
        pytester: pytest.Pytester, sim_rig: Any) -> None:
    from test_docker_target import DOCKERFILE, REQUIREMENTS, target_toml

    (pytester.path / "targets").mkdir()
    (pytester.path / "targets" / "Dockerfile").write_text(DOCKERFILE)
    (pytester.path / "targets" / "requirements.txt").write_text(REQUIREMENTS)
    (pytester.path / "targets" / "box.toml").write_text(target_toml(sim_rig))
    pytester.makepyfile(test_loud="import sys\n\n\ndef test_loud():\n"
                                  "    sys.stderr.write('\\x1b]0;owned\\x07\\x1b[2Jcleared\\r\\n')\n"
                                  "    sys.stderr.flush()\n")
    res = pytester.runpytest_subprocess("--target=box", "-s", timeout=600)
    assert res.ret == 0, res.stdout.str()[-3000:]
    shown = res.stdout.str() + res.stderr.str()
    assert "cleared" in shown and "\x1b" not in shown and "\x07" not in shown


def test_printable_keeps_text_and_drops_control() -> None:
    from hil.progress import printable

    assert printable("a\x1b[31mred\x1b[0m \x1b]0;t\x07ok\r\nnext\tt\x9b2J \x07!") == \
        "ared ok\nnext\tt !"


def test_the_hold_commands_quote_the_workdir_for_both_shells() -> None:
    import shlex

    from hil.session.hold import Hold

    hold = Hold(board="b", container="hil-hold-1", nodeid="t.py::test_x", ttl=60,
                ssh="ssh -F cfg board", workdir="/src/my dir;id")
    for command in (hold.shell_command(), hold.rerun_command()):
        local = shlex.split(command)  # what the local shell hands to ssh
        remote = shlex.split(" ".join(local[local.index("-t") + 1:]))  # the board's shell
        assert remote[remote.index("-w") + 1] == "/src/my dir;id", remote
