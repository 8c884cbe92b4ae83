"""rsync of a checkout to the simulated board over the session's SSH connection."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.errors import ConfigError
from hil.ssh.connection import SshConnection, resolve_endpoint
from hil.ssh.sync import Rsync, SyncStats, check_remote_dir, include_rules, list_files

HOME = "/home/jetson"


@pytest.mark.parametrize(
    ("remote_dir", "allow_outside", "why"),
    [
        ("", False, "is empty"),
        ("   ", False, "is empty"),
        ("/", False, "root folder"),
        ("/.", True, "root folder"),
        ("~", False, "home folder itself"),
        ("~/", False, "home folder itself"),
        (".", False, "home folder itself"),
        ("/home/jetson", False, "home folder itself"),
        ("/home/jetson/", False, "home folder itself"),
        ("hil/..", False, "home folder itself"),
        ("/home", True, "contains the home folder"),
        ("..", False, "contains the home folder"),
        ("~other/hil", False, "'~user' paths"),
        ("/opt/hil", False, "outside the home folder"),
        ("hil/../../other", False, "outside the home folder"),
        ("/etc/hil", True, "system folder"),
        ("/usr/local", True, "system folder"),
        ("/opt", True, "system folder"),
    ],
)
def test_dangerous_remote_dir_is_refused(remote_dir: str, allow_outside: bool, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        check_remote_dir(remote_dir, HOME, allow_outside_home=allow_outside)


@pytest.mark.parametrize(
    ("remote_dir", "allow_outside", "expected"),
    [
        ("hil/pytest-hil", False, "/home/jetson/hil/pytest-hil"),
        ("~/hil/p", False, "/home/jetson/hil/p"),
        ("/home/jetson/work/p/", False, "/home/jetson/work/p"),
        ("a/./b/../c", False, "/home/jetson/a/c"),
        ("/opt/hil/p", True, "/opt/hil/p"),
        ("/data/ci/p", True, "/data/ci/p"),
    ],
)
def test_safe_remote_dir_is_normalised(remote_dir: str, allow_outside: bool, expected: str) -> None:
    assert check_remote_dir(remote_dir, HOME, allow_outside_home=allow_outside) == expected


def test_include_rules_escape_wildcards_and_list_parents() -> None:
    rules = include_rules(["a/b/c.py", "we*ird [x].txt"]).split(b"\0")
    assert rules[:2] == [b"/a/", b"/a/b/"]
    assert b"/a/b/c.py" in rules
    assert b"/we\\*ird \\[x].txt" in rules


def _git_tree(root: Path, files: int) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for i in range(files):
        folder = root / f"pkg{i % 50}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 5, encoding="utf-8")
    (root / ".gitignore").write_text("build/\n*.log\n", encoding="utf-8")
    (root / "build").mkdir()
    (root / "build" / "artifact.bin").write_bytes(b"\0" * 1000)
    (root / "run.log").write_text("ignored\n", encoding="utf-8")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)


@pytest.fixture
def board(sim_rig: Any, sim_jetson: Any) -> Iterator[tuple[SshConnection, Rsync, str]]:
    """A connection to the board, an Rsync over it, and a fresh remote folder."""
    spec = sim_jetson
    conn = SshConnection(resolve_endpoint(spec.ssh.host, config_file=spec.ssh.config),
                         spec.name).open()
    home = conn.run("echo $HOME").stdout.strip()
    remote = check_remote_dir(spec.ssh.remote_dir, home)
    rsync = Rsync(conn, spec.name)
    try:
        yield conn, rsync, remote
    finally:
        conn.run(f"rm -rf {shlex.quote(os.path.dirname(remote))}")
        rsync.close()
        conn.close()


def _remote_files(conn: SshConnection, remote: str) -> set[str]:
    out = conn.run(f"cd {shlex.quote(remote)} && find . \\( -type f -o -type l \\) -print")
    return {line[2:] for line in out.stdout.splitlines()}


def test_unchanged_tree_sends_nothing_and_one_change_sends_one_file(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    conn, rsync, remote = board
    root = tmp_path / "tree"
    _git_tree(root, 5000)
    first = rsync.push(root, remote)
    assert first.transferred == 5001  # 5000 modules + .gitignore
    assert _remote_files(conn, remote) == {p for p in list_files(root).paths or []}
    again = rsync.push(root, remote)
    assert again.transferred == 0
    (root / "pkg7" / "mod7.py").write_text("VALUE = 'changed'\n", encoding="utf-8")
    changed = rsync.push(root, remote)
    assert changed.transferred == 1
    assert changed.files == first.files
    # The change itself is small; the rest is rsync's file list (about 20 bytes a file).
    assert changed.bytes_sent < first.bytes_sent / 3
    assert conn.run(f"cat {shlex.quote(remote)}/pkg7/mod7.py").stdout == "VALUE = 'changed'\n"


def test_ignored_and_deleted_files_vanish_and_nothing_outside_is_touched(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    conn, rsync, remote = board
    root = tmp_path / "tree"
    _git_tree(root, 20)
    parent = shlex.quote(os.path.dirname(remote))
    conn.run(f"mkdir -p {parent} && echo keep > {parent}/sibling.txt")
    rsync.push(root, remote)
    files = _remote_files(conn, remote)
    assert "pkg1/mod1.py" in files
    assert "run.log" not in files and "build/artifact.bin" not in files
    # A stray file on the board and a locally deleted (untracked) file both go.
    conn.run(f"echo stray > {shlex.quote(remote)}/stray.txt")
    (root / "notes.txt").write_text("untracked but not ignored\n", encoding="utf-8")
    rsync.push(root, remote)
    assert "notes.txt" in _remote_files(conn, remote)
    (root / "notes.txt").unlink()
    subprocess.run(["git", "-C", str(root), "rm", "-q", "-f", "pkg2/mod2.py"], check=True)
    stats = rsync.push(root, remote)
    after = _remote_files(conn, remote)
    assert {"notes.txt", "stray.txt", "pkg2/mod2.py"}.isdisjoint(after)
    assert stats.deleted >= 3
    assert conn.run(f"cat {parent}/sibling.txt").stdout == "keep\n"


def test_a_closed_tunnel_never_takes_the_next_tunnels_connections(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    # A tunnel closed under its blocked accept() used to keep accepting on the
    # descriptor's number, which the next tunnel got: it stole the next push's
    # connection and served it over its own (closed) session.
    conn, _, remote = board
    root = tmp_path / "tree"
    _git_tree(root, 3)
    for _ in range(3):
        first = Rsync(conn, "sim-jetson")
        first.push(root, remote)
        thread = first.tunnel._thread
        first.close()
        assert not thread.is_alive()
        second = Rsync(conn, "sim-jetson")
        try:
            assert second.push(root, remote).transferred == 0
        finally:
            second.close()


def test_submodules_are_synced_with_their_own_ignore_rules(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    conn, rsync, remote = board
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t",
           "-c", "protocol.file.allow=always"]
    lib = tmp_path / "lib"
    _git_tree(lib, 3)
    (lib / ".gitignore").write_text("*.log\n", encoding="utf-8")
    subprocess.run([*git, "-C", str(lib), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(lib), "commit", "-q", "-m", "lib"], check=True)
    root = tmp_path / "tree"
    _git_tree(root, 2)
    subprocess.run([*git, "-C", str(root), "submodule", "add", "-q", str(lib), "vendor/lib"],
                   check=True, capture_output=True)
    (root / "vendor" / "lib" / "local.log").write_text("ignored in the submodule\n",
                                                       encoding="utf-8")
    (root / "vendor" / "lib" / "wip.py").write_text("untracked, not ignored\n",
                                                    encoding="utf-8")
    rsync.push(root, remote)
    files = _remote_files(conn, remote)
    assert {"vendor/lib/pkg1/mod1.py", "vendor/lib/wip.py", ".gitmodules"} <= files
    assert "vendor/lib/local.log" not in files and "vendor/lib/.git" not in files
    assert conn.run(f"cat {shlex.quote(remote)}/vendor/lib/pkg2/mod2.py").stdout.startswith(
        "VALUE = 2")


def test_symlink_pointing_outside_the_checkout_is_not_followed(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    conn, rsync, remote = board
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship\n", encoding="utf-8")
    root = tmp_path / "tree"
    _git_tree(root, 3)
    os.symlink(secret, root / "abs_link")
    os.symlink("../secret.txt", root / "rel_escape")
    os.symlink("pkg1/mod1.py", root / "inside_link")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    stats = rsync.push(root, remote)
    assert set(stats.skipped_links) == {"abs_link", "rel_escape"}
    files = _remote_files(conn, remote)
    assert "abs_link" not in files and "rel_escape" not in files
    assert conn.run(f"readlink {shlex.quote(remote)}/inside_link").stdout.strip() == "pkg1/mod1.py"
    grep = conn.run(f"grep -rl 'do not ship' {shlex.quote(remote)}")
    assert grep.stdout == ""


def test_outside_git_the_excludes_apply(tmp_path: Path,
                                        board: tuple[SshConnection, Rsync, str]) -> None:
    conn, rsync, remote = board
    root = tmp_path / "plain"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("A = 1\n", encoding="utf-8")
    (root / "cache").mkdir()
    (root / "cache" / "big.bin").write_bytes(b"x" * 100)
    rsync.push(root, remote, excludes=("cache/",))
    assert _remote_files(conn, remote) == {"src/a.py"}


def test_stats_parse_rsync_figures() -> None:
    text = ("Number of files: 5,052 (reg: 5,001, dir: 51)\n"
            "Number of deleted files: 2\n"
            "Number of regular files transferred: 1\n"
            "Total bytes sent: 101,119\nTotal bytes received: 116\n")
    stats = SyncStats.parse(text)
    assert (stats.files, stats.deleted, stats.transferred, stats.bytes_sent) == (5052, 2, 1, 101119)


def test_include_patterns_match_as_gitignore_lines_do(tmp_path: Path) -> None:
    for rel in ("top.bin", "a/b/deep.bin", "models/x/m.onnx", "a/top.bin.txt", "keep.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x", encoding="utf-8")
    (tmp_path / ".gitignore").write_text("*.bin\nmodels/\n*.txt\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    anywhere = list_files(tmp_path, ["*.bin", "models/"]).paths or ()
    assert {"top.bin", "a/b/deep.bin", "models/x/m.onnx", "keep.py"} <= set(anywhere)
    assert "a/top.bin.txt" not in anywhere
    rooted = list_files(tmp_path, ["/top.bin"]).paths or ()
    assert "top.bin" in rooted and "a/b/deep.bin" not in rooted


def test_a_failed_sync_names_rsyncs_cause_on_its_line(
        tmp_path: Path, board: tuple[SshConnection, Rsync, str]) -> None:
    from hil.errors import SyncFailedError

    conn, rsync, remote = board
    root = tmp_path / "tree"
    _git_tree(root, 3)
    parent = os.path.dirname(remote)
    conn.run(f"mkdir -p {shlex.quote(parent)} && chmod 555 {shlex.quote(parent)}")
    try:
        with pytest.raises(SyncFailedError) as caught:
            rsync.push(root, remote)
    finally:
        conn.run(f"chmod 755 {shlex.quote(parent)}")
    line = str(caught.value)
    assert "failed: " in line and "Permission denied" in line, line
