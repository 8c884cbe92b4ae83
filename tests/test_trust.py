"""Trust boundaries: what the image, the container and the board send back is data, never
an instruction to the host (each case on the simulated rig or a real pytest run)."""

from __future__ import annotations

import base64
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
