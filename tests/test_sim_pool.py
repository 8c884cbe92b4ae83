"""The simulated rig's pool (``hil sim up --boards N``), tested against the real thing.

Three boards beside ``hil-sim-jetson`` (board 0, which other sessions use meanwhile:
these tests never fault it and check that they leave it as it was).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from hil.sim import Rig
from hil.sim.pool import BoardPool, PoolBoard

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

L4T = "hil-sim/l4t-base:r36.4.3"
BASE = "hil-sim/base:bookworm"
REPO = Path(__file__).resolve().parents[1]
POOL = 3
ALIASES = [f"hil-sim-jetson-{i}" for i in range(1, POOL + 1)]


@pytest.fixture(scope="session")
def pool_rig(sim_rig: Rig) -> Rig:
    """The rig with (at least) three pool boards up; the pool is left up afterwards."""
    sim_rig.up(boards=max(POOL, sim_rig.pool.size()))
    return sim_rig


@pytest.fixture
def pool(pool_rig: Rig) -> Iterator[BoardPool]:
    """The pool, with every fault a test injected through it undone after that test."""
    yield pool_rig.pool
    pool_rig.pool.restore_injected()


def hil_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", "sim", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=900, check=False)  # fmt: skip


def answers(board: PoolBoard | Rig) -> bool:
    return board.ssh("true", timeout=15, options=("-o", "ConnectTimeout=3")).returncode == 0


def others_answer(pool: BoardPool, rig: Rig, but: int) -> None:
    """Every board but pool board ``but`` (board 0 included) still logs in."""
    for board in [rig, *(pool[i] for i in range(1, POOL + 1) if i != but)]:
        res = board.ssh("docker", "info", "--format", "'{{.DockerRootDir}}'", timeout=30)
        assert res.returncode == 0, f"{getattr(board, 'ssh_alias', '?')}: {res.stderr}"


def pids(rig: Rig) -> dict[str, object]:
    """The daemons' pids of board 0 and the pool: a restart shows as a change."""
    out: dict[str, object] = {"jetson": rig.jetson.pid(), "sshd": rig.board.sshd_pid(),
                              "colima": rig.colima.pid()}  # fmt: skip
    for b in rig.pool.boards:
        out[b.ssh_alias] = (b.engine.pid(), b.board.sshd_pid())
    return out


# --- each board is a board of its own ------------------------------------------------


def test_each_board_answers_with_its_own_host_key(pool_rig: Rig, tmp_path: Path) -> None:
    lines = dict(line.split(" ", 1) for line in pool_rig.known_hosts.read_text().splitlines())
    by_alias = {names.split(",")[0]: key for names, key in lines.items()}
    assert set(ALIASES) | {"hil-sim-jetson"} <= set(by_alias)
    assert len({by_alias[a] for a in [*ALIASES, "hil-sim-jetson"]}) == POOL + 1
    for i, alias in enumerate(ALIASES, 1):
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", f"10.213.{i}.2"],
                              capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert scan.stdout.split(" ", 1)[1].strip() == by_alias[alias].strip()
        assert answers(pool_rig.pool[i])
    # Board 1's name with board 2's key: strict host key checking refuses it.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"hil-sim-jetson-1,10.213.1.2 {by_alias['hil-sim-jetson-2']}")
    res = pool_rig.pool[1].ssh("true", options=("-o", f"UserKnownHostsFile={wrong}"))
    assert res.returncode == 255
    assert "host key verification failed" in res.stderr.lower()


def test_fabric_reads_every_board_from_the_rigs_ssh_config(pool_rig: Rig) -> None:
    config = paramiko.SSHConfig.from_path(str(pool_rig.ssh_config))
    assert config.lookup("hil-sim-jetson")["hostname"] == "10.213.0.2"
    for i, alias in enumerate(ALIASES, 1):
        entry = config.lookup(alias)
        assert entry["hostname"] == f"10.213.{i}.2"
        assert entry["user"] == "jetson"
        assert entry["stricthostkeychecking"] == "yes"


def test_each_board_has_its_own_hostname_engine_and_disk(pool_rig: Rig) -> None:
    seen_ids = set()
    for i, alias in enumerate(ALIASES, 1):
        res = pool_rig.pool[i].ssh(
            "hostname; cat /etc/hostname; head -c 12 /etc/nv_tegra_release; echo; docker info --format "
            "'{{.ID}} {{.DockerRootDir}} {{json .Runtimes}}'"
        )
        assert res.returncode == 0, res.stderr
        hostname, etc_hostname, release, info = res.stdout.splitlines()
        assert hostname == etc_hostname == alias
        assert release == "# R36 (relea"
        engine_id, root, runtimes = info.split(" ", 2)
        assert root == f"{pool_rig.state_dir}/jetson-{i}/disk/docker"
        assert "nvidia" in json.loads(runtimes)
        seen_ids.add(engine_id)
    board0 = pool_rig.ssh("docker", "info", "--format", "'{{.ID}}'").stdout.strip()
    assert len(seen_ids | {board0}) == POOL + 1


def test_each_board_runs_the_shared_images_with_the_nvidia_runtime(pool_rig: Rig) -> None:
    image_id = pool_rig.jetson.docker(["image", "inspect", "--format", "{{.Id}}", L4T]).stdout
    for i in range(1, POOL + 1):
        board = pool_rig.pool[i]
        # Loaded, not rebuilt: the very image board 0's engine holds.
        assert board.engine.docker(["image", "inspect", "--format", "{{.Id}}", L4T]).stdout == image_id
        assert board.engine.image_exists(BASE)
        res = board.ssh("docker", "run", "--rm", "--runtime", "nvidia", L4T, "python3", "-c",
                        "'raise SystemExit(40 + int(open(\"/etc/nv_tegra_release\").read()[3:5]) - 36)'")
        assert res.returncode == 40, res.stderr


def test_boards_share_no_home_or_tmp(pool_rig: Rig) -> None:
    mark = f"hil-pool-{time.monotonic_ns()}"
    pool = pool_rig.pool
    try:
        assert pool[1].ssh(f"echo one > ~/{mark} && mkdir -p /tmp/{mark}").returncode == 0
        for board in (pool[2], pool[3], pool_rig):
            res = board.ssh(f"test -e ~/{mark} || test -e /tmp/{mark}")
            assert res.returncode == 1, f"board sees board 1's files: {res.stderr}"
        # The board lease (a flock on /tmp/pytest-hil) is per board: both are taken at once.
        hold = pool[1].board.ssh_command("mkdir -p -m 700 /tmp/pytest-hil && exec flock -w 60 /tmp/pytest-hil sleep 30")
        with subprocess.Popen(hold, stdin=subprocess.DEVNULL) as holder:
            try:
                deadline = time.monotonic() + 20
                while pool[1].ssh("flock -n /tmp/pytest-hil true").returncode == 0:
                    assert time.monotonic() < deadline, "board 1's lease was never taken"
                    time.sleep(0.1)
                res = pool[2].ssh("mkdir -p -m 700 /tmp/pytest-hil && flock -n /tmp/pytest-hil true")
                assert res.returncode == 0, res.stderr
            finally:
                holder.kill()
    finally:
        pool[1].ssh(f"rm -rf ~/{mark} /tmp/{mark}")


# --- faults on one board leave the others working -----------------------------------


def test_board2_sshd_stopped_refuses_while_the_others_work(pool: BoardPool, pool_rig: Rig) -> None:
    with pool[2].sshd_stopped():
        res = pool[2].ssh("true", options=("-o", "ConnectTimeout=5"))
        assert res.returncode == 255
        assert "connection refused" in res.stderr.lower()
        others_answer(pool, pool_rig, but=2)
        status = pool_rig.status()
        assert status["boards"]["hil-sim-jetson-2"]["faults"] == ["sshd stopped"]
        assert status["boards"]["hil-sim-jetson-2"]["parts"]["sshd"]["up"] is False
        assert status["boards"]["hil-sim-jetson-1"]["healthy"] is True
        assert "hil-sim-jetson-2: sshd stopped" in status["faults"]
    assert answers(pool[2])


def test_board2_engine_stopped_is_seen_there_only(pool: BoardPool, pool_rig: Rig) -> None:
    with pool[2].jetson_engine_stopped():
        res = pool[2].ssh("docker", "info", timeout=30)
        assert res.returncode != 0
        assert "Cannot connect to the Docker daemon" in res.stderr + res.stdout
        others_answer(pool, pool_rig, but=2)
    res = pool[2].ssh("docker", "info", "--format", "'{{.ServerVersion}}'", timeout=30)
    assert res.returncode == 0, res.stderr


def test_board2_link_cut_times_out_there_only(pool: BoardPool, pool_rig: Rig) -> None:
    with pool[2].link_cut():
        started = time.monotonic()
        res = pool[2].ssh("true", timeout=20, options=("-o", "ConnectTimeout=2"))
        assert res.returncode == 255
        assert "timed out" in res.stderr.lower()
        assert time.monotonic() - started >= 1.5
        others_answer(pool, pool_rig, but=2)
    assert answers(pool[2])


def _connect_ms(address: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.monotonic()
        with socket.create_connection((address, 22), timeout=5):
            best = min(best, (time.monotonic() - started) * 1000)
    return best


def test_board2_netem_delays_board2_only(pool: BoardPool) -> None:
    with pool[2].netem(delay_ms=30):
        assert _connect_ms(pool[2].board_address) >= 55  # 30 ms each way
        assert _connect_ms(pool[1].board_address) < 25
    assert _connect_ms(pool[2].board_address) < 25


def test_a_live_fault_block_survives_restore_and_up_from_another_process(pool: BoardPool) -> None:
    with pool[2].sshd_stopped():
        pool[1].cut_link()  # a plain injection holds the lock as well, until it is restored
        restore = hil_sim("restore")
        assert restore.returncode == 0, restore.stderr
        assert "hil-sim-jetson-2: fault left in place" in restore.stderr
        up = hil_sim("up")
        assert up.returncode == 0, up.stderr
        assert "hil-sim-jetson-2: left as it is (a live session's fault holds it)" in up.stderr
        assert not answers(pool[2])
        assert "hil-sim-jetson-1: fault left in place" in restore.stderr
        assert not pool[1].network.link_up()
        pool[1].restore_link()
    assert answers(pool[2])
    assert answers(pool[1])


def test_restore_undoes_a_fault_left_outside_any_block(pool: BoardPool) -> None:
    # As a crashed session leaves it: stopped by a process that is gone (and its lock with it).
    gone = subprocess.run([sys.executable, "-c", "from hil.sim import Rig; Rig().pool[3].stop_sshd()"],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert not answers(pool[3])
    res = hil_sim("restore")
    assert res.returncode == 0, res.stderr
    assert answers(pool[3])


# --- the command line -----------------------------------------------------------------


def test_status_shows_each_board_up(pool_rig: Rig) -> None:
    res = hil_sim("status", "--json")
    assert res.returncode == 0, res.stderr
    boards = json.loads(res.stdout)["boards"]
    assert list(boards)[:POOL] == ALIASES
    for alias in ALIASES:
        assert {k: v["up"] for k, v in boards[alias]["parts"].items()} == {
            "engine": True, "disk": True, "namespace": True, "link": True, "sshd": True, "images": True,
        }  # fmt: skip
    text = hil_sim("status").stdout
    for i, alias in enumerate(ALIASES, 1):
        assert re.search(rf"^  {alias} +up +10\.213\.{i}\.2 +engine=up .*sshd=up images=up$", text, re.M)


def test_second_up_is_a_no_op_that_leaves_every_daemon_alone(pool_rig: Rig) -> None:
    before = pids(pool_rig)
    res = hil_sim("up", "--boards", str(pool_rig.pool.size()))
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stderr
    assert pids(pool_rig) == before


def test_bad_board_counts_are_usage_errors(pool_rig: Rig) -> None:
    size = pool_rig.pool.size()
    res = hil_sim("up", "--boards", "17")
    assert res.returncode == 4
    assert "--boards must be 0..16, not 17" in res.stderr
    res = hil_sim("status", "--boards", "2")
    assert res.returncode == 4
    assert pool_rig.pool.size() == size


def test_shrinking_takes_the_last_board_down_and_growing_brings_it_back(pool_rig: Rig) -> None:
    board3 = pool_rig.pool[3]
    before = pids(pool_rig)
    res = hil_sim("up", "--boards", "2")
    try:
        assert res.returncode == 0, res.stderr
        assert "hil-sim-jetson-3: took it down" in res.stderr
        assert not Path("/run/netns", board3.layout.netns).exists()
        assert board3.engine.pid() is None and board3.board.sshd_pid() is None
        assert "hil-sim-jetson-3" not in pool_rig.ssh_config.read_text()
        after = pids(pool_rig)
        assert {k: after[k] for k in after} == {k: before[k] for k in after}
    finally:
        started = time.monotonic()
        res = hil_sim("up", "--boards", "3")
        print(f"board 3 back (disk kept) in {time.monotonic() - started:.1f} s")
    assert res.returncode == 0, res.stderr
    assert answers(board3)
    assert board3.engine.image_exists(L4T)
    assert {k: v for k, v in pids(pool_rig).items() if k != "hil-sim-jetson-3"} == {
        k: v for k, v in before.items() if k != "hil-sim-jetson-3"
    }


def test_the_documented_pool_target_lists_the_rigs_boards(pool_rig: Rig) -> None:
    doc = (REPO / "docs" / "sim.md").read_text()
    block = re.search(r"```toml\n(# targets/sim-pool\.toml.*?)```", doc, re.S)
    assert block, "docs/sim.md lost the sim-pool.toml block"
    target = tomllib.loads(block.group(1))
    assert target["ssh"]["hosts"] == ALIASES
    assert target["ssh"]["config"] == str(pool_rig.ssh_config)
    sim_jetson = tomllib.loads((REPO / "targets" / "sim-jetson.toml").read_text())
    assert target["docker"] == sim_jetson["docker"]


def test_each_engine_mounts_its_own_boards_home(pool: BoardPool) -> None:
    """A session hands the engine paths in the board's home (the checkout, the worker):
    the engine must see the home its board's SSH login sees, not board 0's."""
    for i in range(1, POOL + 1):
        board = pool[i]
        marker = f"home of {board.ssh_alias}"
        res = board.ssh(f"printf '%s' '{marker}' > ~/.hil-home-probe && "
                        f"docker run --rm --network none -v \"$HOME/.hil-home-probe:/probe:ro\" "
                        f"{L4T} cat /probe; rm -f ~/.hil-home-probe", timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout == marker
        assert not board.engine.lacks_binds()
