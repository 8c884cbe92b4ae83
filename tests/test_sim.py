"""The simulated rig (``hil sim``), tested against the real thing: sshd, dockerd, veth."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.sim import Rig, wait_until

L4T = "hil-sim/l4t-base:r36.4.3"
BASE = "hil-sim/base:bookworm"
TEGRASTATS_LINE = re.compile(
    r"^\d\d-\d\d-\d{4} \d\d:\d\d:\d\d RAM \d+/7620MB \(lfb 2x4MB\) SWAP \d+/3810MB "
    r"\(cached 1MB\) CPU \[(\d+%@\d+|off)(,(\d+%@\d+|off)){5}\] GR3D_FREQ \d+% "
    r"cpu@\d+\.\d{3}C soc2@\d+\.\d{3}C gpu@\d+\.\d{3}C tj@\d+\.\d{3}C "
    r"VDD_IN \d+mW/\d+mW VDD_CPU_GPU_CV \d+mW/\d+mW VDD_SOC \d+mW/\d+mW$"
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rig(sim_rig: Rig) -> Iterator[Rig]:
    """The rig, with every fault a test injected undone after that test."""
    yield sim_rig
    sim_rig.restore_injected()


def hil_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", "sim", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )


def connect_ms(rig: Rig) -> float:
    """The best of three TCP connects to the board's sshd, in milliseconds."""
    best = float("inf")
    for _ in range(3):
        started = time.monotonic()
        with socket.create_connection((rig.board_address, 22), timeout=5):
            best = min(best, (time.monotonic() - started) * 1000)
    return best


def wait_ssh_works(rig: Rig) -> None:
    wait_until(lambda: rig.ssh("true", timeout=20).returncode == 0, 30, "ssh to the board")


# --- the board ----------------------------------------------------------------


def test_docker_run_with_nvidia_runtime_over_ssh_prints_1(rig: Rig) -> None:
    res = rig.ssh("docker", "run", "--rm", "--runtime", "nvidia", L4T, "python3", "-c",
                  "'print(1)'")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1\n"


def test_container_exit_code_comes_back_through_ssh(rig: Rig) -> None:
    res = rig.ssh("docker", "run", "--rm", "--runtime", "nvidia", L4T, "python3", "-c",
                  "'raise SystemExit(3)'")  # fmt: skip
    assert res.returncode == 3


def test_board_docker_is_the_jetson_engine_with_nvidia_runtime(rig: Rig) -> None:
    res = rig.ssh("docker", "info", "--format", "'{{.DockerRootDir}} {{json .Runtimes}}'")
    assert res.returncode == 0, res.stderr
    root, runtimes = res.stdout.split(" ", 1)
    assert root == str(rig.jetson_data_root)
    assert "nvidia" in json.loads(runtimes)


def test_board_user_is_jetson_in_the_docker_group(rig: Rig) -> None:
    res = rig.ssh("id", "-un", "&&", "id", "-Gn")
    assert res.stdout.split("\n")[0] == "jetson"
    assert "docker" in res.stdout.split("\n")[1].split()


def test_nv_tegra_release_on_board_is_r36_4_3(rig: Rig) -> None:
    res = rig.ssh("cat", "/etc/nv_tegra_release")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == (
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025"
    )


def test_tegrastats_on_board_prints_jetpack6_lines_that_vary(rig: Rig) -> None:
    res = rig.ssh("timeout", "1.9", "tegrastats", "--interval", "200")
    lines = res.stdout.splitlines()
    assert len(lines) >= 5, res.stdout + res.stderr
    for line in lines:
        assert TEGRASTATS_LINE.match(line), line
    assert len({line[20:] for line in lines}) > 1, "numbers never change"


def test_tegrastats_logfile_is_written_until_killed(rig: Rig) -> None:
    script = (
        "f=$(mktemp); tegrastats --interval 100 --logfile $f & pid=$!; "
        "for i in $(seq 100); do [ $(wc -l < $f) -ge 3 ] && break; sleep 0.1; done; "
        "kill -0 $pid && echo running; kill $pid; wait $pid; cat $f; rm -f $f"
    )
    res = rig.ssh("sh", "-c", f"'{script}'")
    lines = res.stdout.splitlines()
    assert lines[0] == "running"
    assert len(lines) >= 4
    assert all(TEGRASTATS_LINE.match(line) for line in lines[1:])


def test_jetson_face_is_absent_on_the_host(rig: Rig) -> None:
    assert not Path("/etc/nv_tegra_release").exists()
    assert shutil.which("tegrastats") is None
    assert not Path("/usr/local/bin/tegrastats").exists()


def test_l4t_image_has_the_face_and_base_image_has_not(rig: Rig) -> None:
    res = rig.jetson.docker(["run", "--rm", L4T, "sh", "-c",
                             "head -1 /etc/nv_tegra_release && tegrastats --help"])  # fmt: skip
    assert res.stdout.startswith("# R36 (release), REVISION: 4.3")
    assert "--interval" in res.stdout
    plain = rig.colima.docker(["run", "--rm", BASE, "ls", "/etc/nv_tegra_release"], check=False)
    assert plain.exited != 0


def test_rsync_and_flock_work_for_the_board_user(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.txt").write_text("hello board\n")
    rsh = f"ssh -F {rig.ssh_config}"
    done = subprocess.run(
        ["rsync", "-a", "--delete", "-e", rsh, f"{tmp_path / 'src'}/",
         f"{rig.ssh_alias}:hil-sim-test-rsync/"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    res = rig.ssh("flock", "hil-sim-test-rsync/.lock", "cat", "hil-sim-test-rsync/hello.txt")
    assert res.stdout == "hello board\n", res.stderr
    rig.ssh("rm", "-rf", "hil-sim-test-rsync")


@pytest.mark.parametrize("engine_name, image", [("jetson", L4T), ("colima", BASE)])
def test_pip_install_works_in_docker_build_with_host_network(
    rig: Rig, tmp_path: Path, engine_name: str, image: str
) -> None:
    engine = rig.jetson if engine_name == "jetson" else rig.colima
    (tmp_path / "Dockerfile").write_text(
        f"FROM {image}\nRUN pip install --no-cache-dir pytest && python3 -m pytest --version\n"
    )
    tag = f"hil-sim-test/pip:{engine_name}"
    try:
        res = engine.docker(["build", "--network", "host", "-t", tag, str(tmp_path)], timeout=600)
        assert res.ok
        version = engine.docker(["run", "--rm", tag, "python3", "-m", "pytest", "--version"])
        assert version.stdout.startswith("pytest ") or version.stderr.startswith("pytest ")
    finally:
        engine.docker(["rmi", "-f", tag], check=False)


# --- SSH security ---------------------------------------------------------------


def test_wrong_host_key_in_known_hosts_is_refused(rig: Rig, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    key = other.with_suffix(".pub").read_text().split()
    wrong.write_text(f"{rig.ssh_alias},{rig.board_address} {key[0]} {key[1]}\n")
    res = rig.ssh("true", options=("-o", f"UserKnownHostsFile={wrong}"))
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr


def test_unknown_client_key_is_refused(rig: Rig, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    # Without the generated config: its IdentityFile would be offered too.
    res = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(stranger), "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={rig.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", f"{rig.user}@{rig.board_address}", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 255
    assert "Permission denied (publickey)" in res.stderr


# --- faults -------------------------------------------------------------------


def test_link_cut_makes_ssh_time_out_and_restore_brings_it_back(rig: Rig) -> None:
    with rig.link_cut():
        assert rig.status()["parts"]["link"]["up"] is False
        res = rig.ssh("true", options=("-o", "ConnectTimeout=2"))
        assert res.returncode == 255
        assert "timed out" in res.stderr
    wait_ssh_works(rig)


def test_sshd_stopped_refuses_connections_and_start_restores(rig: Rig) -> None:
    with rig.sshd_stopped():
        assert rig.status()["parts"]["sshd"]["up"] is False
        res = rig.ssh("true", options=("-o", "ConnectTimeout=5"))
        assert res.returncode == 255
        assert "Connection refused" in res.stderr
    wait_ssh_works(rig)
    assert rig.ssh("cat", "/etc/nv_tegra_release").returncode == 0


def test_netem_delays_each_way_and_clears(rig: Rig) -> None:
    assert connect_ms(rig) < 15
    with rig.netem(delay_ms=20) as via:
        assert via in ("tc-netem", "nfqueue")
        assert rig.status()["parts"]["link"]["netem"]["delay_ms"] == 20
        assert connect_ms(rig) >= 39  # one round trip: 20 ms out, 20 ms back
        assert rig.ssh("echo", "slow").stdout == "slow\n"
    assert connect_ms(rig) < 15
    assert rig.status()["parts"]["link"]["netem"] == {}


def test_netem_total_loss_makes_ssh_time_out(rig: Rig) -> None:
    with rig.netem(loss_pct=100):
        res = rig.ssh("true", options=("-o", "ConnectTimeout=2"))
        assert res.returncode == 255
        assert "timed out" in res.stderr
    wait_ssh_works(rig)


def test_jetson_engine_stopped_is_seen_on_board_and_start_restores(rig: Rig) -> None:
    with rig.jetson_engine_stopped():
        res = rig.ssh("docker", "info")
        assert res.returncode != 0
        assert "Cannot connect to the Docker daemon" in res.stderr
    res = rig.ssh("docker", "run", "--rm", "--runtime", "nvidia", L4T, "true")
    assert res.returncode == 0, res.stderr


def test_engine_disk_limit_shows_in_df_on_board_and_restores(rig: Rig) -> None:
    df = "'df -m --output=avail $(docker info -f {{.DockerRootDir}}) | tail -1'"
    with rig.engine_disk_limited(200) as free:
        assert 150 <= free <= 200
        assert 150 <= int(rig.ssh("sh", "-c", df).stdout) <= 201  # df -m rounds up
        assert rig.status()["parts"]["jetson_disk"]["limited"] is True
    assert int(rig.ssh("sh", "-c", df).stdout) > 1024


# --- the command line -------------------------------------------------------------


def test_status_json_shows_every_part_up(rig: Rig) -> None:
    res = hil_sim("status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["up"] is True
    assert {name: part["up"] for name, part in status["parts"].items()} == {
        "colima_engine": True,
        "jetson_engine": True,
        "jetson_disk": True,
        "namespace": True,
        "link": True,
        "sshd": True,
        "images": True,
    }


def test_second_up_is_a_no_op_that_says_so(rig: Rig) -> None:
    res = hil_sim("up")
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stderr


@pytest.mark.sim_restart
def test_down_leaves_nothing_and_up_works_again(rig: Rig) -> None:
    # A container still running on the board (one that ignores SIGTERM, as a test
    # left behind by a cut link would) must not keep the engine's disk busy.
    left = rig.ssh("docker", "run", "-d", "--stop-timeout", "1", "--runtime", "nvidia", L4T,
                   "sleep", "600")  # fmt: skip
    assert left.returncode == 0, left.stderr
    res = hil_sim("down")
    assert res.returncode == 0, res.stderr
    try:
        assert not Path("/run/netns", rig.layout.netns).exists()
        assert not Path("/sys/class/net", rig.layout.host_if).exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert "hil-sim" not in mounts
        assert not rig.layout.runtime_dir.exists()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        assert str(rig.state_dir) not in ps.stdout
        again = hil_sim("down")
        assert again.returncode == 0
        assert "already down" in again.stderr
    finally:
        up = hil_sim("up")
    assert up.returncode == 0, up.stderr
    res = rig.ssh("docker", "run", "--rm", "--runtime", "nvidia", L4T, "python3", "-c",
                  "'print(1)'")  # fmt: skip
    assert res.stdout == "1\n", res.stderr


def test_unsupported_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("hil.sim._proc._EXTRA_PATH", ())
    reason = Rig.unsupported_reason()
    assert reason is not None
    assert "apt-get install -y" in reason
    assert "docker.io" in reason and "openssh-server" in reason
    if os.geteuid() != 0:
        assert "not running as root" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_tree_takes_submounts_and_detaches_a_busy_mount(tmp_path: Path) -> None:
    from hil.sim.disk import is_mountpoint, unmount_tree

    top, sub = tmp_path / "top", tmp_path / "top" / "docker"
    top.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(top)], check=True)
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    holder = subprocess.Popen(["sleep", "600"], cwd=sub)  # keeps the tree busy
    try:
        unmount_tree(top, what="unmounting the test tree", timeout=0.5)
        assert not is_mountpoint(sub)
        assert not is_mountpoint(top)
    finally:
        holder.kill()
        holder.wait()
        for point in (sub, top):
            if is_mountpoint(point):
                subprocess.run(["umount", "-l", str(point)], check=False)
