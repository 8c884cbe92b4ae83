"""Base images without a registry: debootstrap once, cache the tarball, import per engine.

The root filesystem tarball is cached under ``<state>/images`` keyed by a hash
of the debootstrap inputs, so a second ``up`` (or a fresh engine) imports it in
seconds.  On top of the raw import, ``hil-sim/base`` adds the host's CA bundle
and a pip.conf naming it (this host intercepts TLS, so pip inside
``docker build --network host`` needs that CA), and ``hil-sim/l4t-base`` adds
the Jetson face.  Each image carries a label with the digest of what went into
it; an image whose label matches is left alone.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.errors import BuildFailedError
from hil.sim._proc import run, run_streaming
from hil.sim.engine import DockerEngine
from hil.sim.face import NV_TEGRA_RELEASE, TEGRASTATS, face_digest

DIGEST_LABEL = "org.hil-sim.digest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
CA_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    f"PIP_CERT={CA_IN_IMAGE}",
    # Real l4t-base (Ubuntu 22.04) has no PEP 668 marker: plain `pip install` works there.
    "PIP_BREAK_SYSTEM_PACKAGES=1",
)
PIP_CONF = f"[global]\ncert = {CA_IN_IMAGE}\n"


def _progress(message: str) -> None:
    print(f"hil sim: {message}", file=sys.stderr, flush=True)


def host_ca_bundle() -> Path:
    """The CA bundle this host's pip trusts: ``PIP_CERT``, pip.conf's ``cert``, or Debian's."""
    candidates = [os.environ.get("PIP_CERT", "")]
    for conf in ("/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")):
        parser = configparser.ConfigParser()
        try:
            parser.read(conf)
        except configparser.Error:
            continue
        candidates.append(parser.get("global", "cert", fallback=""))
    candidates.append("/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BuildFailedError("no CA bundle found on this host (looked for PIP_CERT, pip.conf, Debian's)")


@dataclass(frozen=True)
class RootfsSpec:
    """The debootstrap inputs; their hash names the cached tarball."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    mirror: str = DEFAULT_MIRROR
    arch: str = "amd64"

    @classmethod
    def for_host(cls, suite: str) -> RootfsSpec:
        """The spec for this host's architecture and mirror (env ``HIL_SIM_MIRROR``)."""
        arch = run(["dpkg", "--print-architecture"], check=False).stdout.strip() or "amd64"
        return cls(suite=suite, mirror=os.environ.get("HIL_SIM_MIRROR") or DEFAULT_MIRROR, arch=arch)

    @property
    def key(self) -> str:
        """The hash of the inputs (hex, 16 chars)."""
        text = json.dumps([self.suite, self.variant, sorted(self.packages), self.mirror, self.arch]).encode()
        return hashlib.sha256(text).hexdigest()[:16]


class ImageCache:
    """Makes the rootfs tarball once and puts the rig's images into an engine."""

    def __init__(self, cache_dir: Path, spec: RootfsSpec, base_image: str, l4t_image: str) -> None:
        self.cache_dir = cache_dir
        self.spec = spec
        self.base_image = base_image
        self.l4t_image = l4t_image

    @property
    def tarball(self) -> Path:
        """The cached root filesystem tarball."""
        return self.cache_dir / f"rootfs-{self.spec.suite}-{self.spec.key}.tar"

    @property
    def raw_image(self) -> str:
        """The image imported straight from the tarball."""
        return f"hil-sim/rootfs:{self.spec.suite}-{self.spec.key}"

    def ensure_tarball(self) -> Path:
        """Debootstrap and tar the root filesystem unless the tarball is cached."""
        if self.tarball.exists():
            return self.tarball
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        rootfs = self.cache_dir / f"rootfs-{self.spec.key}.d"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        spec = self.spec
        started = time.monotonic()
        _progress(
            f"debootstrap {spec.suite} ({spec.variant}, {', '.join(spec.packages)}); "
            "about a minute, cached afterwards"
        )
        run_streaming(
            [
                "debootstrap",
                f"--variant={spec.variant}",
                f"--arch={spec.arch}",
                f"--include={','.join(spec.packages)}",
                spec.suite,
                str(rootfs),
                spec.mirror,
            ],
            prefix="  debootstrap: ",
            error=BuildFailedError,
            what="debootstrap",
        )
        # No downloaded .debs in the image; debootstrap leaves them behind.
        for junk in [
            *(rootfs / "var/cache/apt/archives").glob("*.deb"),
            *(rootfs / "var/cache/apt").glob("*.bin"),
        ]:
            junk.unlink()
        partial = self.tarball.with_suffix(".tar.partial")
        run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
            timeout=600,
            error=BuildFailedError,
            what="tar of the root filesystem",
        )
        partial.replace(self.tarball)
        shutil.rmtree(rootfs)
        _progress(f"root filesystem cached in {self.tarball} ({time.monotonic() - started:.0f} s)")
        return self.tarball

    def base_digest(self) -> str:
        """What goes into the base image: the rootfs key, the host's CA bundle, env, pip.conf."""
        ca = host_ca_bundle().read_bytes()
        extra = json.dumps([IMAGE_ENV, PIP_CONF]).encode()
        return hashlib.sha256(self.spec.key.encode() + ca + extra).hexdigest()[:16]

    def l4t_digest(self) -> str:
        """What goes into the l4t image: the base digest and the Jetson face."""
        return hashlib.sha256((self.base_digest() + face_digest()).encode()).hexdigest()[:16]

    def ensure_images_needed(self, engine: DockerEngine, *, l4t: bool) -> bool:
        """True when ``engine`` lacks an up-to-date base image (or l4t image when ``l4t``)."""
        if engine.image_label(self.base_image, DIGEST_LABEL) != self.base_digest():
            return True
        return l4t and engine.image_label(self.l4t_image, DIGEST_LABEL) != self.l4t_digest()

    def ensure_images(self, engine: DockerEngine, *, l4t: bool) -> list[str]:
        """Put the base image (and the l4t one when ``l4t``) into ``engine``; returns those made."""
        made: list[str] = []
        base_digest = self.base_digest()
        if engine.image_label(self.base_image, DIGEST_LABEL) != base_digest:
            if not engine.image_exists(self.raw_image):
                started = time.monotonic()
                _progress(f"importing {self.tarball.name} into the {engine.name} engine")
                engine.docker(
                    ["import", "--change", 'CMD ["/bin/bash"]', str(self.tarball), self.raw_image],
                    timeout=900,
                )
                _progress(f"imported {self.raw_image} ({time.monotonic() - started:.0f} s)")
            self._layer(engine, self.raw_image, self.base_image, base_digest, self._base_files)
            made.append(self.base_image)
        if l4t:
            l4t_digest = self.l4t_digest()
            if engine.image_label(self.l4t_image, DIGEST_LABEL) != l4t_digest:
                self._layer(engine, self.base_image, self.l4t_image, l4t_digest, self._l4t_files)
                made.append(self.l4t_image)
        if made:
            # Our superseded images, now untagged; nobody else's dangling images.
            engine.docker(["image", "prune", "-f", "--filter", f"label={DIGEST_LABEL}"], check=False)
        return made

    @staticmethod
    def _base_files(root: Path) -> None:
        ca = root / CA_IN_IMAGE.lstrip("/")
        ca.parent.mkdir(parents=True)
        shutil.copyfile(host_ca_bundle(), ca)
        # Only the CA: the host's own indexes (file://...) mean nothing in the image.
        (root / "etc" / "pip.conf").write_text(PIP_CONF)

    @staticmethod
    def _l4t_files(root: Path) -> None:
        (root / "etc").mkdir()
        (root / "etc" / "nv_tegra_release").write_text(NV_TEGRA_RELEASE)
        tool = root / "usr" / "bin" / "tegrastats"
        tool.parent.mkdir(parents=True)
        tool.write_text(TEGRASTATS)
        tool.chmod(0o755)

    def _layer(
        self,
        engine: DockerEngine,
        parent: str,
        image: str,
        digest: str,
        files: Callable[[Path], None],
    ) -> None:
        """Make ``image`` = ``parent`` + the files written by ``files``, labelled ``digest``."""
        _progress(f"making {image} in the {engine.name} engine")
        name = f"hil-sim-layer-{os.getpid()}-{time.monotonic_ns()}"
        with tempfile.TemporaryDirectory(prefix="hil-sim-layer-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            files(root)
            engine.docker(["create", "--name", name, "--network", "none", parent, "/bin/true"])
            try:
                engine.docker(["cp", f"{root}/.", f"{name}:/"])
                changes: list[str] = []
                for env in IMAGE_ENV:
                    changes += ["--change", f"ENV {env}"]
                changes += [
                    "--change",
                    f"LABEL {DIGEST_LABEL}={digest}",
                    "--change",
                    'CMD ["/bin/bash"]',
                ]
                engine.docker(["commit", *changes, name, image])
            finally:
                engine.docker(["rm", "-f", name], check=False)
