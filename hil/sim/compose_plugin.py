"""Compose v2 on the simulated board: the ``docker compose`` CLI plugin, as JetPack ships it.

Debian 12 has only the standalone ``docker-compose`` 1.29.2 (which the colima
engine keeps).  Debian 13's ``docker-compose`` package is Compose v2 as a Docker
CLI plugin, one Go binary that runs on Debian 12.  It is fetched once with
apt-get from a private apt state folder (its own sources list naming trixie,
its own lists and cache: the host's apt configuration and packages are left
alone, nothing is upgraded), unpacked with ``dpkg -x`` and cached under
``<state>/tools``.  The board sees it at JetPack's path,
``/usr/libexec/docker/cli-plugins/docker-compose``, through its face (an
overlay inside sshd's mount namespace), so this host's own ``docker`` keeps
answering without it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from hil.errors import BuildFailedError
from hil.sim._proc import run
from hil.sim.images import DEFAULT_MIRROR

#: Where JetPack's docker-compose-plugin puts the plugin (and where the board's CLI finds it).
BOARD_PLUGIN_PATH = "/usr/libexec/docker/cli-plugins/docker-compose"
#: The Debian release whose ``docker-compose`` package is Compose v2.
SUITE = "trixie"
PACKAGE = "docker-compose"
#: Debian's archive keyring (it carries trixie's keys since bookworm's point releases).
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _say(message: str) -> None:
    print(f"hil sim: {message}", file=sys.stderr, flush=True)


class ComposePlugin:
    """The cached Compose v2 plugin binary: fetched once, then linked into each board's face."""

    def __init__(self, tools_dir: Path) -> None:
        self.tools_dir = tools_dir

    @property
    def binary(self) -> Path:
        """The cached plugin (``<state>/tools/docker-compose``)."""
        return self.tools_dir / "docker-compose"

    def version(self) -> str:
        """The cached plugin's version (``2.26.1-4``), or "" when it is absent or broken."""
        if not self.binary.is_file():
            return ""
        done = run([str(self.binary), "version", "--short"], check=False, timeout=30)
        return done.stdout.strip() if done.ok else ""

    def ensure(self) -> Path:
        """The cached plugin, fetched first when absent (needs root and apt-get)."""
        if self.version():
            return self.binary
        self.tools_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hil-sim-apt-", dir=self.tools_dir) as tmp:
            deb = self._download(Path(tmp))
            unpacked = Path(tmp) / "root"
            run(["dpkg", "-x", str(deb), str(unpacked)], error=BuildFailedError,
                what=f"dpkg -x {deb.name}")
            found = unpacked / BOARD_PLUGIN_PATH.lstrip("/")
            if not found.is_file():
                raise BuildFailedError(f"{deb.name} has no {BOARD_PLUGIN_PATH}")
            partial = self.binary.with_name(".docker-compose.partial")
            shutil.copyfile(found, partial)
            partial.chmod(0o755)
            partial.replace(self.binary)
        version = self.version()
        if not version:
            raise BuildFailedError(f"{self.binary} does not run here (`version` failed)")
        _say(f"compose v2 plugin {version} cached in {self.binary}")
        return self.binary

    @staticmethod
    def _download(folder: Path) -> Path:
        """``apt-get download`` the package through a private apt state folder under ``folder``."""
        mirror = os.environ.get("HIL_SIM_MIRROR") or DEFAULT_MIRROR
        for sub in ("lists/partial", "cache/archives/partial", "parts", "prefs"):
            (folder / sub).mkdir(parents=True)
        sources = folder / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {mirror} {SUITE} main\n")
        options = [
            f"-oDir::State={folder}", f"-oDir::State::Lists={folder / 'lists'}",
            f"-oDir::Cache={folder / 'cache'}", f"-oDir::Etc::sourcelist={sources}",
            f"-oDir::Etc::sourceparts={folder / 'parts'}",
            f"-oDir::Etc::preferencesparts={folder / 'prefs'}",
            f"-oDir::Etc::preferences={folder / 'prefs' / 'none'}",
            "-oAPT::Sandbox::User=root", "-qq",
        ]
        _say(f"fetching Compose v2 ({PACKAGE} from Debian {SUITE}, private apt state)")
        run(["apt-get", *options, "update"], timeout=300, error=BuildFailedError,
            what=f"apt-get update ({SUITE} sources, private state)")
        # `apt-get download` writes into its working folder.
        run(["apt-get", *options, "download", PACKAGE], timeout=300, error=BuildFailedError,
            what=f"apt-get download {PACKAGE} ({SUITE})", cwd=folder)
        debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise BuildFailedError(f"apt-get download {PACKAGE} left no .deb")
        return debs[-1]

    def link_into(self, face_dir: Path) -> Path | None:
        """Put the cached plugin into a board's face at JetPack's path; None when not cached."""
        if not self.binary.is_file():
            return None
        target = face_dir / "libexec" / BOARD_PLUGIN_PATH.removeprefix("/usr/libexec/")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(".docker-compose.partial")
        partial.unlink(missing_ok=True)
        try:  # the state dir is one filesystem: a hard link costs no space per board
            os.link(self.binary, partial)
        except OSError:
            shutil.copyfile(self.binary, partial)
        partial.chmod(0o755)
        partial.replace(target)
        return target
