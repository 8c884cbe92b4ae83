"""Dependencies images: content-hash tags and minimal build contexts.

The tag of a target's image is a hash of exactly what the build reads: the
Dockerfile, its build arguments, the files named in ``hash_files`` and every
local source of its ``COPY``/``ADD`` lines.  Test and onboard sources are
bind-mounted at run time, so editing them never changes the tag.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hil.config import TargetSpec
from hil.errors import ConfigError

_COPY = re.compile(r"^\s*(COPY|ADD)\s+(.*)$", re.IGNORECASE)


def _copy_sources(dockerfile_text: str) -> list[str]:
    """Local sources of ``COPY``/``ADD`` lines (flags, URLs and ``--from`` stages skipped)."""
    sources: list[str] = []
    for line in dockerfile_text.splitlines():
        match = _COPY.match(line)
        if not match:
            continue
        words = match.group(2).split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words and words[0].startswith("["):  # JSON form
            continue
        sources += [w for w in words[:-1] if "://" not in w]
    return sources


@dataclass(frozen=True)
class ImageRecipe:
    """What one dependencies image is built from, and the tag it gets."""

    dockerfile: str
    build_args: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    digest: str
    repository: str

    @property
    def tag(self) -> str:
        """``hil-deps:<16 hex digits of the content hash>``: equal inputs share one image."""
        return f"{self.repository}:{self.digest[:16]}"


def recipe(spec: TargetSpec, root: Path) -> ImageRecipe:
    """Hash the image inputs of ``spec``'s Dockerfile under the checkout ``root``."""
    dockerfile = root / spec.docker.dockerfile
    if not dockerfile.is_file():
        raise ConfigError(
            f"{spec.source}: key 'docker.dockerfile' names {spec.docker.dockerfile!r}, "
            f"which does not exist under {root}"
        )
    text = dockerfile.read_text(encoding="utf-8")
    names: set[str] = set()
    for pattern in (*spec.docker.hash_files, *_copy_sources(text)):
        matches = [p for p in root.glob(pattern) if p.is_file()] or (
            [p for p in (root / pattern).rglob("*") if p.is_file()] if (root / pattern).is_dir()
            else [])
        if not matches:
            raise ConfigError(
                f"{spec.source}: image input {pattern!r} (hash_files or COPY) matches no file "
                f"under {root}"
            )
        names.update(p.relative_to(root).as_posix() for p in matches)
    digest = hashlib.sha256()
    digest.update(b"dockerfile\0" + spec.docker.dockerfile.encode() + b"\0" + text.encode())
    args = tuple(sorted(spec.docker.build_args.items()))
    for key, value in args:
        digest.update(f"arg\0{key}\0{value}\0".encode())
    for name in sorted(names):
        digest.update(b"file\0" + name.encode() + b"\0" + (root / name).read_bytes())
    return ImageRecipe(
        dockerfile=spec.docker.dockerfile,
        build_args=args,
        inputs=tuple(sorted(names)),
        digest=digest.hexdigest(),
        repository="hil-deps",
    )


def build_context(recipe: ImageRecipe, root: Path) -> io.BytesIO:
    """A tar of just the Dockerfile and its inputs: small, so builds start fast."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted({recipe.dockerfile, *recipe.inputs}):
            tar.add(str(root / name), arcname=name, recursive=False)
    buf.seek(0)
    return buf
