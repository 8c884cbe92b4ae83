"""The user's pytest arguments as the container's pytest must see them."""

from __future__ import annotations

from pathlib import Path

#: Options that only make sense on the controller: (name, takes a value).
HOST_ONLY_OPTIONS: dict[str, bool] = {
    "--target": True, "--hil-targets": True, "--hil-require-tier": True,
    "--hil-keep-results": False, "--hil-rebuild": False, "--hil-lease-timeout": True,
    "--hil-reports": True, "--hil-no-allure": False, "--hil-plan": False, "--hil-max-resumes": True,
    "--hil-shard": True, "--hil-confirm-failures": False, "--hil-hold-on-failure": True,
    "--hil-gpu-evidence": True, "--hil-gpu-interval": True,
    "--junitxml": True, "--junit-xml": True, "--alluredir": True, "--clean-alluredir": False,
    "--basetemp": True, "--result-log": True, "--resultlog": True, "--pastebin": True,
}
#: Options whose value is a path that must be rewritten to the container's view.
PATH_OPTIONS = {"--rootdir", "-c", "--config-file", "--confcutdir", "--ignore", "--deselect",
                "--ignore-glob"}


def remote_args(args: list[str], root: Path, cwd: Path, mount: str = "/src") -> list[str]:
    """The user's pytest arguments as the container's pytest must see them.

    Host-only options are dropped, absolute paths under the checkout are
    rewritten to the mount point; everything else passes unchanged as a list
    (never through a shell), so ids with spaces and brackets survive.
    """
    out: list[str] = []
    i = 0

    def remap(value: str) -> str:
        path = Path(value.split("::", 1)[0])
        if path.is_absolute():
            try:
                rel = path.resolve().relative_to(root.resolve())
            except ValueError:
                return value
            return (Path(mount) / rel).as_posix() + value[len(value.split("::", 1)[0]):]
        return value

    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in HOST_ONLY_OPTIONS:
            i += 1 if eq or not HOST_ONLY_OPTIONS[name] else 2
            continue
        if name in PATH_OPTIONS:
            if eq:
                out.append(f"{name}={remap(value)}")
            elif i + 1 < len(args):
                out += [arg, remap(args[i + 1])]
                i += 1
            i += 1
            continue
        out.append(remap(arg) if not arg.startswith("-") else arg)
        i += 1
    return out


def checkout_subdir(root: Path, cwd: Path) -> str:
    """Where pytest was started, relative to the checkout root ("" at the root or outside)."""
    try:
        subdir = cwd.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return ""
    return "" if subdir == "." else subdir
