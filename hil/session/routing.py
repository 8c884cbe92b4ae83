"""Tier routing: ``--target a,b`` and ``--target auto``.

Each test goes to the cheapest of the chosen targets that serves its tier
(cost: a docker target, then an ssh target; ties in the order given); a tier
no chosen target serves goes to the highest-tier one (an ssh target first:
nearest the hardware), where the tier gate skips it with its reason, as on
one target.  ``[tool.hil]
routing = { tier1 = "sim-colima", tier2 = "sim-jetson" }`` in pyproject.toml
fixes a tier's target instead (for ``auto``, and for ``a,b`` when the named
target is among them).  ``auto`` chooses among every docker and ssh target
of the inventory (pools are not routed to yet).

The targets run at once as the members of one controller session
(:func:`routed_layout`): each
container collects the suite and keeps the tests routed to it (``HIL_ROUTE``,
:class:`hil.worker.RouteFilter`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hil.config import Inventory, TargetSpec
from hil.errors import ConfigError

if TYPE_CHECKING:
    from hil.session.controller import Layout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The routing of a ``--target a,b`` session (set by the plugin at configure).
ROUTING_KEY = pytest.StashKey["Routing"]()
#: Cost of a kind: the cheapest serving target wins.
COST = {"docker": 0, "ssh": 1}
TIERS = (1, 2, 3)


@dataclass(frozen=True)
class Routing:
    """The targets of a routed session and the target of each tier."""

    targets: tuple[TargetSpec, ...]
    #: tier -> target name
    route: Mapping[int, str]
    #: ``auto``: the targets it left out, and why (``name: reason``).
    left_out: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The session's name: the targets, joined by ``_`` (a container name's character)."""
        return "_".join(t.name for t in self.targets)

    def target_of(self, tier: int) -> str:
        """The target tests of ``tier`` run on."""
        return self.route[tier]

    def env(self) -> str:
        """``HIL_ROUTE`` for the containers."""
        return json.dumps({str(k): v for k, v in sorted(self.route.items())})


def is_routed(name: str) -> bool:
    """Whether a ``--target`` value asks for routing."""
    return name == "auto" or "," in name


def configured_routes(root: Path) -> dict[int, str]:
    """``[tool.hil] routing`` of ``root``'s pyproject.toml: tier -> target name."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    with pyproject.open("rb") as fh:
        tool: Any = tomllib.load(fh).get("tool", {}).get("hil", {})
    table = tool.get("routing", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError("pyproject.toml: key 'tool.hil.routing' must be a table, "
                          "e.g. { tier1 = \"colima\", tier2 = \"jetson\" }")
    out: dict[int, str] = {}
    for key, value in table.items():
        tier = {f"tier{t}": t for t in TIERS}.get(key)
        if tier is None or not isinstance(value, str):
            raise ConfigError(f"pyproject.toml: key 'tool.hil.routing.{key}' must be one of "
                              f"tier1, tier2, tier3 naming a target, got {key} = {value!r}")
        out[tier] = value
    return out


def resolve(value: str, inventory: Inventory,
            unusable: Callable[[TargetSpec], str] | None = None) -> Routing:
    """The routing ``--target VALUE`` asks for; a usage error names what is wrong.

    ``unusable`` says why ``auto`` must leave a target out ("" to keep it;
    default :func:`unreachable`).
    """
    unusable = unusable or unreachable
    configured = configured_routes(inventory.root)
    left_out: list[str] = []
    if value == "auto":
        targets = []
        for name in inventory.names():
            spec = inventory.targets[name]
            why = "a pool of boards (not routed yet)" if spec.ssh.hosts else \
                unusable(spec) if spec.kind in COST else ""
            if why:
                left_out.append(f"{name}: {why}")
            elif spec.kind in COST:
                targets.append(spec)
        for name in configured.values():
            inventory.get(name)  # an unknown name in the config is an error, not ignored
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ConfigError(f"--target {value!r}: name two or more distinct targets, "
                              "comma-separated (or 'auto')")
        targets = [inventory.get(n) for n in names]
    for spec in targets:
        if spec.ssh.hosts:
            raise ConfigError(f"--target {value!r}: '{spec.name}' is a pool of boards; a pool "
                              "among routed targets is not supported yet")
        if spec.kind not in COST:
            raise ConfigError(f"--target {value!r}: '{spec.name}' is a {spec.kind} target; "
                              "routing spreads tests over docker and ssh targets")
    if not targets:
        raise ConfigError("--target auto: no docker or ssh target to route to"
                          + (f" (left out: {'; '.join(left_out)})" if left_out else ""))
    chosen = {t.name: t for t in targets}
    order = {t.name: i for i, t in enumerate(targets)}
    by_cost = sorted(targets, key=lambda t: (COST[t.kind], order[t.name]))
    route: dict[int, str] = {}
    for tier in TIERS:
        fixed = configured.get(tier)
        if fixed in chosen:
            route[tier] = str(fixed)
            continue
        serving = [t for t in by_cost if t.tier >= tier]
        if serving:
            route[tier] = serving[0].name
        else:  # nobody serves it: the most capable, nearest the hardware (ssh before docker),
            # where the tier gate skips it with its reason
            best = max(t.tier for t in targets)
            route[tier] = next(t.name for t in reversed(by_cost) if t.tier == best)
    used = set(route.values())
    return Routing(targets=tuple(t for t in targets if t.name in used), route=route,
                   left_out=tuple(left_out))


def unreachable(spec: TargetSpec) -> str:
    """Why ``auto`` cannot use a target, found without connecting ("" when it may be used):
    a docker target with no engine socket to try, a board whose alias is in no ssh_config
    and names no machine."""
    import socket

    if spec.kind == "docker":
        from hil.backends.docker import engine_candidates

        try:
            found = engine_candidates(spec.docker.engine, spec.docker.context, spec.source)
        except ConfigError as err:
            return str(err)
        if any(not c.url.startswith("unix://") or Path(c.url[7:]).exists() for c in found):
            return ""
        return "no Docker engine socket here (" + ", ".join(c.url for c in found) + ")"
    from hil.ssh.connection import declared_hosts, resolve_endpoint

    ep = resolve_endpoint(spec.ssh.host, config_file=spec.ssh.config)
    config = spec.ssh.config or "~/.ssh/config"
    if ep.hostname != ep.alias or ep.alias in declared_hosts(config):
        return ""
    try:
        socket.getaddrinfo(ep.alias, ep.port)
    except OSError:
        return f"no Host '{ep.alias}' in {config}, and no machine of that name"
    return ""


__all__ = ["Routing", "configured_routes", "is_routed", "resolve"]


# -- the session ---------------------------------------------------------------------------

def routed_spec(routing: Routing) -> TargetSpec:
    """A stand-in target for the routed session as a whole (its name, its highest tier)."""
    kinds = {t.kind for t in routing.targets}
    return TargetSpec(name=routing.name, kind="ssh" if "ssh" in kinds else "docker",
                      tier=max(t.tier for t in routing.targets), source="--target",
                      description="routed: " + ", ".join(
                          f"tier{k} -> {v}" for k, v in sorted(routing.route.items())))


def routed_layout(routing: Routing) -> Layout:
    """The routed targets as members; each container keeps the tests routed to it."""
    from hil.session.controller import Layout
    from hil.session.shards import shard_levels, share_env

    def env(config: pytest.Config, member: TargetSpec, index: int, count: int) -> dict[str, str]:
        return {**member.env, "HIL_TARGET": member.name, "HIL_TIER": str(member.tier),
                "HIL_ROUTE": routing.env(), **share_env(config, shard_levels(config))}

    return Layout(name=routing.name, specs=routing.targets, env=env)
