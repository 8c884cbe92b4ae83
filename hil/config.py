"""Target inventory: TOML files (or ``[tool.hil]``) -> frozen, validated ``TargetSpec``.

Every problem is reported as a :class:`~hil.errors.ConfigError` with one line
naming the file, the key and what was expected, e.g.::

    targets/jetson.toml: key 'tier' must be an integer 1-3, got 'two'

Sources, in order of precedence:

* ``--hil-targets DIR``: every ``*.toml`` in DIR (replaces the next two);
* ``[tool.hil.targets.NAME]`` tables in the rootdir's ``pyproject.toml``;
* ``targets/*.toml`` under the rootdir (or ``[tool.hil] targets_dir``).

Where the rootdir declares none (a monorepo's subfolder with a pytest
configuration of its own), its parents are searched up to the repository's
top (the folder holding ``.git``): the first folder that declares targets is
the inventory's ``root``, the folder its relative paths (Dockerfile,
``hash_files``) and the synced checkout start from.  An unknown name lists the
places looked at.

A ``local`` target serving the detected tier always exists unless declared.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from hil.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Jetson images)
    import tomli as tomllib

Kind = Literal["local", "docker", "ssh"]
KINDS: tuple[str, ...] = ("local", "docker", "ssh")
DEFAULT_TARGET = "local"


@dataclass(frozen=True)
class SshSpec:
    """How to reach a board over SSH."""

    host: str = ""
    #: A pool of boards (ssh_config aliases), in place of ``host``: tests are spread over them.
    hosts: tuple[str, ...] = ()
    config: str = ""
    remote_dir: str = ""
    user: str = ""
    port: int = 0
    allow_outside_home: bool = False
    #: Extra rsync exclude patterns, used when the checkout is not a git repository.
    excludes: tuple[str, ...] = ()
    #: Git-ignored paths that must travel too (glob patterns under the checkout, e.g.
    #: generated code, model files, ``*.egg-info``); a folder brings everything in it.
    include: tuple[str, ...] = ()

    @property
    def boards(self) -> tuple[str, ...]:
        """Every board of the target: ``hosts``, or ``host`` alone."""
        return self.hosts or ((self.host,) if self.host else ())


@dataclass(frozen=True)
class LabgridSpec:
    """Boards reserved from a labgrid coordinator (``[labgrid]``), in place of ``[ssh] host(s)``."""

    #: HOST[:PORT] of the coordinator ("" = ``$LG_COORDINATOR``).
    coordinator: str = ""
    #: Tags every reserved place must carry (``{ board = "orin-nano" }``).
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Or these places by name, each reserved.
    places: tuple[str, ...] = ()
    #: Boards wanted; 0 = ``"all"``: every matching place free at the request (at least one).
    count: int = 1
    #: labgrid's reservation priority (higher goes first).
    priority: int = 0

    @property
    def wants(self) -> str:
        """The request in words (``3 place(s) tagged board=sim-orin``)."""
        count = "every free" if self.count == 0 else str(self.count)
        if self.places:
            return f"places {', '.join(self.places)}"
        return f"{count} place(s) tagged " + ",".join(f"{k}={v}" for k, v in self.tags.items())


@dataclass(frozen=True)
class DockerSpec:
    """The Docker engine, image and container settings of a container target."""

    engine: str = ""
    context: str = ""
    runtime: str = ""
    dockerfile: str = "targets/Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)
    hash_files: tuple[str, ...] = ()
    build_network: str = ""
    network: str = ""
    memory: str = ""
    #: Where the checkout is mounted read-only inside the container.
    workdir: str = "/src"


@dataclass(frozen=True)
class ComposeSpec:
    """Services beside the tests: a docker compose file and the service the tests run in."""

    #: The compose file, relative to the inventory root ("" = no compose project).
    file: str = ""
    #: The service whose container runs the tests (its image, env, networks, volumes).
    service: str = ""
    #: Compose profiles to enable (``--profile``).
    profiles: tuple[str, ...] = ()
    #: An env file for the file's ``${VAR}`` interpolation (``--env-file``), relative to the root.
    env_file: str = ""
    #: Seconds the other services get to become healthy (or running, without a healthcheck).
    ready_timeout: float = 120.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each step."""

    connect: float = 10.0
    build: float = 1800.0
    run: float = 3600.0
    lease: float = 300.0
    #: How long a lab place of a session that died (no heartbeat) stays acquired.
    lab_ttl: float = 60.0


@dataclass(frozen=True)
class PreflightSpec:
    """Thresholds checked before a session starts."""

    min_free_mb: int = 1024
    require_swap: bool = False


@dataclass(frozen=True)
class TargetSpec:
    """One declared execution target."""

    name: str
    kind: Kind
    tier: int
    source: str
    description: str = ""
    ssh: SshSpec = field(default_factory=SshSpec)
    docker: DockerSpec = field(default_factory=DockerSpec)
    env: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    preflight: PreflightSpec = field(default_factory=PreflightSpec)
    compose: ComposeSpec = field(default_factory=ComposeSpec)
    #: Boards reserved from a labgrid coordinator (None: the ``[ssh]`` host or hosts).
    labgrid: LabgridSpec | None = None
    #: True for ``local`` when the tier was not declared and is to be detected.
    detect_tier: bool = False
    #: Names of ``[env]`` or host variables whose values are secrets (``[env] redact``),
    #: beside every name with TOKEN, SECRET, PASSWORD or KEY (:mod:`hil.redact`).
    redact: tuple[str, ...] = ()

    @property
    def is_container(self) -> bool:
        """Whether the tests of this target run inside a container."""
        return self.kind in ("docker", "ssh")


_TOP_KEYS = {"name", "kind", "tier", "description", "ssh", "docker", "env", "timeouts", "preflight",
             "compose", "labgrid"}
_SECTIONS: dict[str, type[Any]] = {
    "ssh": SshSpec,
    "docker": DockerSpec,
    "timeouts": Timeouts,
    "preflight": PreflightSpec,
    "compose": ComposeSpec,
}
_SECTION_KINDS = {"ssh": ("ssh",), "docker": ("docker", "ssh"), "compose": ("docker", "ssh"),
                  # Free space and swap are read by the board's preflight script; a docker
                  # target's engine may live in a VM (Colima) whose disk this host cannot see.
                  "preflight": ("ssh",)}
#: Keys of a shared section that only some kinds read: a key no backend of the kind reads
#: would be ignored without a word (a bogus engine socket would still "pass").
_KEY_KINDS = {"docker.engine": ("docker",), "docker.context": ("docker",),
              "timeouts.lease": ("ssh",), "timeouts.lab_ttl": ("ssh",)}


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _check_value(source: str, key: str, value: object, default: object) -> object:
    """Validate one field against the type of its default and convert it."""
    where = f"{source}: key '{key}'"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be a boolean, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where} must be a positive number of seconds, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a non-negative integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be an array of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, Mapping):
        return _string_table(source, key, value)
    raise AssertionError(f"unhandled field type for {key}")  # pragma: no cover


def _string_table(source: str, key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: key '{key}' must be a table of strings, got {value!r}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(
                f"{source}: key '{key}.{k}' must be a string, got {_type_name(v)} {v!r}"
            )
        out[str(k)] = str(v)
    return out


def _section(source: str, name: str, cls: type[Any], table: object) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: key '{name}' must be a table, got {table!r}")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key '{name}.{key}' (expected one of: {', '.join(sorted(known))})"
            )
        values[key] = _check_value(source, f"{name}.{key}", value, getattr(defaults, key))
    return cls(**values)


def parse_target(data: Mapping[str, Any], source: str, default_name: str | None = None) -> TargetSpec:
    """Validate one target's table and build its :class:`TargetSpec`."""
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"{source}: unknown key '{key}' (expected one of: {', '.join(sorted(_TOP_KEYS))})"
            )
    name = data.get("name", default_name)
    if name is None:
        raise ConfigError(f"{source}: missing key 'name' (the target's name, a string)")
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"{source}: key 'name' must be a non-empty string of letters, digits, '-' and '_', "
            f"got {name!r}"
        )
    if default_name is not None and "name" in data and name != default_name:
        raise ConfigError(f"{source}: key 'name' is {name!r} but must equal {default_name!r}")
    if "kind" not in data:
        raise ConfigError(f"{source}: missing key 'kind' (one of: {', '.join(KINDS)})")
    kind = data["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{source}: key 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    detect = False
    if "tier" in data:
        tier = data["tier"]
        if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 3:
            raise ConfigError(f"{source}: key 'tier' must be an integer 1-3, got {tier!r}")
    elif kind == "local":
        tier, detect = 1, True
    else:
        raise ConfigError(f"{source}: missing key 'tier' (the tier the target serves, 1-3)")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: key 'description' must be a string, got {description!r}")
    sections = _sections_for(source, data, kind)
    if "labgrid" in data:
        if kind != "ssh":
            raise ConfigError(f"{source}: key 'labgrid' is not allowed for kind '{kind}' (only for: ssh)")
        sections["labgrid"] = _labgrid(source, data["labgrid"], sections.get("ssh", SshSpec()))
    if kind == "ssh":
        _check_ssh(source, sections.get("ssh", SshSpec()), lab="labgrid" in sections)
    if "compose" in sections:
        _check_compose(source, sections["compose"])
    env_table = data.get("env", {})
    redact: tuple[str, ...] = ()
    if isinstance(env_table, dict) and isinstance(env_table.get("redact"), list):
        env_table = dict(env_table)
        names = env_table.pop("redact")
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{source}: key 'env.redact' must be an array of variable names, "
                              f"got {names!r}")
        redact = tuple(names)
    env = _string_table(source, "env", env_table) if "env" in data else {}
    return TargetSpec(
        name=name,
        kind=kind,
        tier=tier,
        source=source,
        description=description,
        env=env,
        redact=redact,
        detect_tier=detect,
        **sections,
    )


def _labgrid(source: str, table: object, ssh: SshSpec) -> LabgridSpec:
    """Validate ``[labgrid]``: tags or places, a count (or "all"), an integer priority."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: key 'labgrid' must be a table, got {table!r}")
    if ssh.host or ssh.hosts:
        raise ConfigError(f"{source}: keys 'labgrid' and 'ssh.host'/'ssh.hosts' exclude each other "
                          "(boards come from the coordinator's places)")
    raw = dict(table)
    count = raw.pop("count", 1)
    if count == "all":
        count = 0
    elif isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{source}: key 'labgrid.count' must be a positive integer or \"all\", "
                          f"got {count!r}")
    priority = raw.pop("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"{source}: key 'labgrid.priority' must be an integer, got {priority!r}")
    spec: LabgridSpec = _section(source, "labgrid", LabgridSpec, raw)
    spec = replace(spec, count=count, priority=priority)
    if bool(spec.tags) == bool(spec.places):
        raise ConfigError(f"{source}: key 'labgrid' needs 'tags' (a table) or 'places' (an array), "
                          "one of them")
    if spec.places and (len(set(spec.places)) != len(spec.places) or not all(spec.places)):
        raise ConfigError(f"{source}: key 'labgrid.places' must be an array of distinct place names, "
                          f"got {list(spec.places)!r}")
    if spec.places and "count" in table and count != len(spec.places):
        raise ConfigError(f"{source}: key 'labgrid.count' is {table['count']!r} but 'labgrid.places' "
                          f"names {len(spec.places)}")
    if spec.places:
        spec = replace(spec, count=len(spec.places))
    bad = [k for k in spec.tags if not k[:1].isalpha() or not k.replace("_", "").isalnum()
           or k != k.lower()]
    if bad:
        raise ConfigError(f"{source}: key 'labgrid.tags' has invalid tag names {bad!r} "
                          "(lower-case letters, digits and '_', starting with a letter)")
    return spec


def _sections_for(source: str, data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The target's tables (``[ssh]``, ``[docker]``...), each refused where ``kind`` reads
    none of it, and each key refused where ``kind`` does not read it."""
    sections: dict[str, Any] = {}
    for sect, cls in _SECTIONS.items():
        if sect in data:
            allowed = _SECTION_KINDS.get(sect)
            if allowed and kind not in allowed:
                raise ConfigError(
                    f"{source}: key '{sect}' is not allowed for kind '{kind}' "
                    f"(only for: {', '.join(allowed)})"
                )
            sections[sect] = _section(source, sect, cls, data[sect])
            _check_key_kinds(source, sect, data[sect], kind)
    return sections


def _check_ssh(source: str, ssh: SshSpec, lab: bool = False) -> None:
    """The ``[ssh]`` keys an ssh target must give: one board or a pool (unless ``lab``: the
    boards are a ``[labgrid]`` reservation's), and the remote folder."""
    if ssh.host and ssh.hosts:
        raise ConfigError(f"{source}: keys 'ssh.host' and 'ssh.hosts' exclude each other "
                          "(one board, or a pool of boards)")
    if not lab and not ssh.host and not ssh.hosts:
        raise ConfigError(f"{source}: missing key 'ssh.host' (an ssh_config alias or host "
                          "name) or 'ssh.hosts' (a pool: an array of them)")
    if any(not h.strip() for h in ssh.hosts) or len(set(ssh.hosts)) != len(ssh.hosts):
        raise ConfigError(f"{source}: key 'ssh.hosts' must be an array of distinct, "
                          f"non-empty host names, got {list(ssh.hosts)!r}")
    if not ssh.remote_dir:
        raise ConfigError(
            f"{source}: missing key 'ssh.remote_dir' (where the checkout goes on the board)"
        )


def _check_key_kinds(source: str, sect: str, table: Mapping[str, Any], kind: str) -> None:
    """Refuse a key of ``sect`` that no backend of ``kind`` reads (see :data:`_KEY_KINDS`)."""
    for key in table:
        allowed = _KEY_KINDS.get(f"{sect}.{key}")
        if allowed and kind not in allowed:
            raise ConfigError(f"{source}: key '{sect}.{key}' is not allowed for kind '{kind}' "
                              f"(only for: {', '.join(allowed)})")


def _check_compose(source: str, compose: ComposeSpec) -> None:
    """The ``[compose]`` keys that must be given, and names compose would refuse."""
    if not compose.file:
        raise ConfigError(f"{source}: missing key 'compose.file' (the docker compose file, "
                          "relative to the checkout)")
    if not compose.service:
        raise ConfigError(f"{source}: missing key 'compose.service' (the compose service the "
                          "tests run in)")
    for key, value in (("compose.file", compose.file), ("compose.env_file", compose.env_file)):
        if value.startswith("/") or ".." in value.split("/"):
            raise ConfigError(f"{source}: key '{key}' must be a path inside the checkout, "
                              f"got {value!r}")
    names = (("compose.service", compose.service),
             *(("compose.profiles", p) for p in compose.profiles))
    for key, value in names:
        if not value or not all(c.isalnum() or c in "._-" for c in value):
            raise ConfigError(f"{source}: key '{key}' must be a compose name (letters, digits, "
                              f"'.', '_', '-'), got {value!r}")


def _load_toml(path: Path, display: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except tomllib.TOMLDecodeError as err:
        # tomllib messages end with "(at line L, column C)".
        raise ConfigError(f"{display}: TOML syntax error: {err}") from None
    except OSError as err:
        raise ConfigError(f"{display}: cannot read: {err.strerror}") from None


def _display(path: Path, rootdir: Path) -> str:
    try:
        return str(path.resolve().relative_to(rootdir.resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Inventory:
    """All declared targets, by name."""

    targets: Mapping[str, TargetSpec]
    #: The folder the targets were declared in: where their relative paths start.
    root: Path = Path(".")
    #: Where targets were looked for, for the unknown-name error.
    searched: tuple[str, ...] = ()
    #: Target files that could not be read, by name: only a session naming one fails.
    broken: Mapping[str, ConfigError] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Known target names, sorted."""
        return sorted(self.targets)

    def get(self, name: str) -> TargetSpec:
        """The target called ``name``; an unknown name lists the known ones."""
        if name in self.broken:
            raise self.broken[name]
        try:
            return self.targets[name]
        except KeyError:
            looked = (f" (looked for pyproject.toml [tool.hil] and targets/*.toml in: "
                      f"{', '.join(self.searched)})" if self.searched else "")
            raise ConfigError(
                f"unknown target '{name}'; known targets: {', '.join(self.names())}{looked}"
            ) from None


def _declares_targets(folder: Path) -> bool:
    """Whether ``folder`` has a ``[tool.hil]`` table or a ``targets/`` folder of TOML files."""
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file() and "hil" in _load_toml(pyproject, str(pyproject)).get("tool", {}):
        return True
    return any((folder / "targets").glob("*.toml"))


def inventory_root(rootdir: Path) -> tuple[Path, tuple[str, ...]]:
    """The folder whose targets apply to ``rootdir``, and the folders looked in.

    ``rootdir`` itself when it declares targets, else the nearest parent that
    does, up to the repository's top (outside a git repository, ``rootdir``
    alone); ``rootdir`` when none does.
    """
    start = rootdir.resolve()
    chain = (start, *start.parents)
    top = next((i for i, folder in enumerate(chain) if (folder / ".git").exists()), 0)
    searched: list[str] = []
    for folder in chain[:top + 1]:
        searched.append(f"{folder}/")
        if _declares_targets(folder):
            return folder, tuple(searched)
    return start, tuple(searched)


def targets_folder(rootdir: Path) -> Path:
    """The folder a new target file goes in: ``[tool.hil] targets_dir``, else ``targets/``."""
    root, _ = inventory_root(rootdir)
    pyproject = root / "pyproject.toml"
    tool = _load_toml(pyproject, "pyproject.toml").get("tool", {}).get("hil", {}) \
        if pyproject.is_file() else {}
    folder = tool.get("targets_dir") if isinstance(tool, dict) else None
    return root / folder if isinstance(folder, str) else root / "targets"


def load_inventory(rootdir: Path, targets_dir: Path | None = None) -> Inventory:
    """Read every declared target for ``rootdir`` (see the module docstring)."""
    found: dict[str, TargetSpec] = {}
    searched: tuple[str, ...] = ()
    if targets_dir is None:
        rootdir, searched = inventory_root(rootdir)

    def add(spec: TargetSpec) -> None:
        if spec.name in found:
            raise ConfigError(
                f"{spec.source}: duplicate target name '{spec.name}' "
                f"(already declared in {found[spec.name].source})"
            )
        found[spec.name] = spec

    folder: Path | None = targets_dir
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"--hil-targets: '{folder}' is not a directory")
    pyproject = rootdir / "pyproject.toml"
    if folder is None and pyproject.is_file():
        tool = _load_toml(pyproject, "pyproject.toml").get("tool", {}).get("hil", {})
        if not isinstance(tool, dict):
            raise ConfigError("pyproject.toml: key 'tool.hil' must be a table")
        for key in tool:
            if key not in ("targets", "targets_dir", "routing", "gpu_evidence",
                           "gpu_interval_ms"):
                raise ConfigError(
                    f"pyproject.toml: unknown key 'tool.hil.{key}' "
                    "(expected: targets, targets_dir, routing, gpu_evidence, gpu_interval_ms)"
                )
        declared = tool.get("targets", {})
        if not isinstance(declared, dict):
            raise ConfigError("pyproject.toml: key 'tool.hil.targets' must be a table of tables")
        for name, table in declared.items():
            if not isinstance(table, dict):
                raise ConfigError(f"pyproject.toml: key 'tool.hil.targets.{name}' must be a table")
            add(parse_target(table, f"pyproject.toml [tool.hil.targets.{name}]", default_name=name))
        if "targets_dir" in tool:
            if not isinstance(tool["targets_dir"], str):
                raise ConfigError("pyproject.toml: key 'tool.hil.targets_dir' must be a string")
            folder = rootdir / tool["targets_dir"]
    if folder is None:
        folder = rootdir / "targets"
    broken: dict[str, ConfigError] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            display = _display(path, rootdir)
            try:
                spec = parse_target(_load_toml(path, display), display, default_name=path.stem)
            except ConfigError as err:  # one bad file fails its own target, not every one
                broken[path.stem] = err
                continue
            add(spec)
    if DEFAULT_TARGET not in found:
        found[DEFAULT_TARGET] = TargetSpec(
            name=DEFAULT_TARGET, kind="local", tier=1, source="built-in", detect_tier=True,
            description="this host, in-process; tier detected",
        )
    return Inventory(targets=found, root=rootdir, searched=searched, broken=broken)
