"""``hil init NAME``: write one target file from what the team already has, then check it.

From flags (``--ssh ALIAS``, ``--compose FILE --service NAME`` or
``--dockerfile FILE``, ``--tier N``), or, on a terminal, from questions for
what the flags left out.  The ssh alias is looked up in the ssh_config (so a
typo is caught here, not at the first run); a compose file must exist and name
the service.  An existing target file is never overwritten.  The new target is
then checked as ``hil doctor NAME`` would, and ``hil init`` exits with the
doctor's code (the file stays: fix the board, then run ``hil doctor NAME``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hil.config import load_inventory, parse_target, targets_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from hil.errors import ConfigError
from hil.progress import Progress
from hil.ssh.connection import declared_hosts

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil init``."""
    parser.add_argument("name", metavar="NAME", help="the new target's name (targets/NAME.toml)")
    parser.add_argument("--ssh", metavar="ALIAS", default=None,
                        help="a board: its Host alias in the ssh_config (kind ssh)")
    parser.add_argument("--ssh-config", metavar="FILE", default="",
                        help="the ssh_config holding the alias (default: ~/.ssh/config)")
    parser.add_argument("--docker", action="store_true",
                        help="a local Docker engine instead of a board (kind docker)")
    parser.add_argument("--engine", default="", metavar="URL",
                        help="kind docker: the engine's URL (default: discovery)")
    parser.add_argument("--remote-dir", default=None, metavar="DIR",
                        help="kind ssh: where the checkout goes on the board (default: hil/<project>)")
    parser.add_argument("--compose", default=None, metavar="FILE",
                        help="the team's compose file (relative to the checkout)")
    parser.add_argument("--service", default=None, metavar="NAME",
                        help="the compose service the tests run in")
    parser.add_argument("--dockerfile", default=None, metavar="FILE",
                        help="the image recipe, when there is no compose file")
    parser.add_argument("--tier", type=int, default=None, choices=(1, 2, 3),
                        help="the tier the target serves: 1 CPU, 2 CUDA GPU, 3 airframe")
    parser.add_argument("--runtime", default=None, metavar="NAME",
                        help="the container runtime (default: nvidia on a board, none on docker)")
    parser.add_argument("--rootdir", default=".", metavar="DIR", help="the checkout (default: .)")
    parser.add_argument("--no-check", action="store_true", help="do not run the doctor after")


def _asker(interactive: bool) -> Callable[[str, str], str]:
    """A question on the terminal (default shown in brackets), or the default when not one."""
    def ask(question: str, default: str) -> str:
        if not interactive:
            return default
        shown = f" [{default}]" if default else ""
        answer = input(f"{question}{shown}: ").strip()
        return answer or default
    return ask


def _check_alias(alias: str, config_path: Path) -> None:
    if not config_path.is_file():
        raise ConfigError(f"no ssh_config at {config_path}: cannot look up Host {alias!r}",
                          hint="name one with --ssh-config")
    hosts = declared_hosts(str(config_path))
    if alias not in hosts:
        raise ConfigError(f"no Host {alias!r} in {config_path}",
                          hint=f"add a `Host {alias}` block (HostName, User, IdentityFile), "
                               f"or use one of: {', '.join(hosts) or '(none)'}")


def _check_compose(root: Path, file: str, service: str) -> None:
    path = root / file
    if not path.is_file():
        raise ConfigError(f"no compose file {file!r} under {root}")
    text = path.read_text(encoding="utf-8")
    # A service is a key one level under `services:`; compose itself checks the rest at run time.
    if not re.search(rf"(?m)^[ \t]+{re.escape(service)}[ \t]*:", text):
        raise ConfigError(f"{file} has no service {service!r}",
                          hint="--service names the service the tests run in")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(args: argparse.Namespace, kind: str, project: str) -> str:
    """The target file's text."""
    lines = [f"# Written by `hil init {args.name}`; the README's TOML reference has every key.",
             f"kind = {_toml_str(kind)}", f"tier = {args.tier}", ""]
    if kind == "ssh":
        lines += ["[ssh]", f"host = {_toml_str(args.ssh)}"]
        if args.ssh_config:
            lines.append(f"config = {_toml_str(args.ssh_config)}")
        lines += [f"remote_dir = {_toml_str(args.remote_dir or f'hil/{project}')}", ""]
    docker = []
    if kind == "docker" and args.engine:
        docker.append(f"engine = {_toml_str(args.engine)}")
    if args.runtime:
        docker.append(f"runtime = {_toml_str(args.runtime)}")
    if args.dockerfile:
        docker.append(f"dockerfile = {_toml_str(args.dockerfile)}")
    if docker:
        lines += ["[docker]", *docker, ""]
    if args.compose:
        lines += ["[compose]", f"file = {_toml_str(args.compose)}",
                  f"service = {_toml_str(args.service)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _complete(args: argparse.Namespace, root: Path, interactive: bool) -> str:
    """Fill what the flags left out (questions on a terminal); returns the kind."""
    ask = _asker(interactive)
    if args.ssh is None and not args.docker:
        args.ssh = ask("ssh alias of the board (empty: a local Docker engine)", "") or None
    kind = "ssh" if args.ssh else "docker"
    if args.compose is None and args.dockerfile is None:
        args.compose = ask("compose file of your harness (empty: none)", "") or None
    if args.compose and not args.service:
        args.service = ask("compose service the tests run in", "")
        if not args.service:
            raise ConfigError("--compose needs --service (the service the tests run in)")
    if not args.compose and args.dockerfile is None:
        args.dockerfile = ask("Dockerfile of the tests' image", "targets/Dockerfile")
    if args.tier is None:
        answer = ask("tier the target serves (1 CPU, 2 CUDA GPU)", "1")
        if answer not in ("1", "2", "3"):
            raise ConfigError(f"the tier is 1, 2 or 3, not {answer!r}")
        args.tier = int(answer)
    if args.runtime is None:
        args.runtime = "nvidia" if kind == "ssh" else ""
    if kind == "ssh":
        config = Path(args.ssh_config).expanduser() if args.ssh_config else \
            Path("~/.ssh/config").expanduser()
        _check_alias(args.ssh, config)
    if args.compose:
        _check_compose(root, args.compose, args.service)
    elif args.dockerfile and not (root / args.dockerfile).is_file():
        raise ConfigError(f"no Dockerfile {args.dockerfile!r} under {root}")
    return kind


def run(args: argparse.Namespace) -> int:
    """Write ``targets/NAME.toml`` (never over one) and check it; the doctor's exit code."""
    if not _NAME.fullmatch(args.name):
        raise ConfigError(f"a target name is letters, digits, '.', '_' and '-', not {args.name!r}")
    if args.ssh and args.docker:
        raise ConfigError("--ssh (a board) and --docker (a local engine) exclude each other")
    if args.compose and args.dockerfile:
        raise ConfigError("--compose and --dockerfile exclude each other: the compose "
                          "service's build: makes the image", hint="name one")
    root = Path(args.rootdir).resolve()
    folder = targets_folder(root)
    path = folder / f"{args.name}.toml"
    if path.exists():
        raise ConfigError(f"{path} exists: hil init never overwrites a target",
                          hint=f"edit it, or choose another name; check it with "
                               f"`hil doctor {args.name}`")
    kind = _complete(args, root, sys.stdin.isatty())
    text = render(args, kind, root.name)
    # The same checks as every target file gets, before anything is written.
    parse_target(tomllib.loads(text), f"{folder.name}/{args.name}.toml", default_name=args.name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as out:  # "x": a file made meanwhile is kept
        out.write(text)
    print(f"hil init: wrote {path}")
    if args.no_check:
        return 0
    from hil.cli.doctor import diagnose

    spec = load_inventory(root).get(args.name)
    report, code = diagnose(spec, root, Progress(sys.stderr))
    print(report.table())
    print(f"hil init: target '{args.name}' is " + ("ready: pytest --target=" + args.name
                                                  if code == 0 else
                                                  f"not ready yet (exit {code}); fix it, then "
                                                  f"`hil doctor {args.name}`"))
    return code
