"""The pytest plugin: options, markers and hook wiring only.

The work lives elsewhere: the inventory in :mod:`hil.config`, tiers in
:mod:`hil.tiers`, the controller of container targets in :mod:`hil.session.controller`
(registered only when a container target is chosen, so the local target never
imports Docker or Fabric).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hil.config import DEFAULT_TARGET, TargetSpec, load_inventory
from hil.errors import ConfigError, HilError, TargetUnhealthyError
from hil.settings import SETTINGS_KEY, HilSettings, git_commit
from hil.tiers import detect_local_tier, item_tier, register_markers, skip_reason, tier_label
from hil.worker import ShareFilter, TierGate

HELP_TARGET = "where to run the tests: a target name from targets/*.toml (default: $HIL_TARGET or 'local')"
HELP_TARGETS = "folder of target TOML files (default: [tool.hil] in pyproject.toml, then targets/)"
HELP_PLAN = "print, per test, the target it would run on or its skip reason; run nothing"
HELP_REQUIRE = "fail with the target-unhealthy code unless the target serves at least tier N"
HELP_KEEP = "keep earlier Allure results instead of cleaning the results folder"
HELP_REBUILD = "rebuild the target's dependencies image even when its content hash is present"
HELP_LEASE = "seconds to wait for a board's lease before exiting with the device-busy code"
HELP_REPORTS = "folder for run output: reports/<run-id>/, allure-results/ (default: reports)"
HELP_NO_ALLURE = "do not write Allure results"
HELP_MAX_RESUMES = ("container targets: how many times a run resumes in a fresh container after "
                    "a test crashed the interpreter (default 3); past it, exit 19")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop targets (pytest-hil)")
    group.addoption("--target", dest="hil_target", metavar="NAME", default=None, help=HELP_TARGET)
    group.addoption("--hil-targets", dest="hil_targets", metavar="DIR", default=None,
                    help=HELP_TARGETS)
    group.addoption("--hil-plan", dest="hil_plan", action="store_true", help=HELP_PLAN)
    group.addoption("--hil-require-tier", dest="hil_require_tier", metavar="N", type=int,
                    default=None, choices=(1, 2, 3), help=HELP_REQUIRE)
    group.addoption("--hil-keep-results", dest="hil_keep_results", action="store_true",
                    help=HELP_KEEP)
    group.addoption("--hil-rebuild", dest="hil_rebuild", action="store_true", help=HELP_REBUILD)
    group.addoption("--hil-lease-timeout", dest="hil_lease_timeout", metavar="SECONDS",
                    type=float, default=None, help=HELP_LEASE)
    group.addoption("--hil-reports", dest="hil_reports", metavar="DIR", default=None,
                    help=HELP_REPORTS)
    group.addoption("--hil-no-allure", dest="hil_no_allure", action="store_true",
                    help=HELP_NO_ALLURE)
    group.addoption("--hil-max-resumes", dest="hil_max_resumes", metavar="N", type=int,
                    default=3, help=HELP_MAX_RESUMES)
    from hil.session.shards import HELP_SHARD

    group.addoption("--hil-shard", dest="hil_shard", metavar="I/N", default=None,
                    help=HELP_SHARD)
    from hil.session.attribution import HELP_CONFIRM

    group.addoption("--hil-confirm-failures", dest="hil_confirm_failures", action="store_true",
                    help=HELP_CONFIRM)
    from hil.session.hold import HELP_HOLD, parse_ttl

    group.addoption("--hil-hold-on-failure", dest="hil_hold_on_failure", metavar="TTL",
                    type=parse_ttl, default=None, help=HELP_HOLD)
    from hil.evidence.plugin import add_options

    add_options(group)


def _resolve_target(config: pytest.Config) -> tuple[TargetSpec, Path]:
    """The chosen target and the folder its inventory was declared in.

    ``--target a,b`` and ``--target auto`` resolve to a routing (kept in the
    stash, :data:`hil.routing.ROUTING_KEY`) and a stand-in target for it.
    """
    folder = config.getoption("hil_targets")
    try:
        inventory = load_inventory(config.rootpath, Path(folder) if folder else None)
        name = config.getoption("hil_target") or os.environ.get("HIL_TARGET") or DEFAULT_TARGET
        from hil.session.routing import ROUTING_KEY, is_routed, resolve, routed_spec

        if is_routed(name):
            routing = resolve(name, inventory)
            config.stash[ROUTING_KEY] = routing
            return routed_spec(routing), inventory.root
        return inventory.get(name), inventory.root
    except ConfigError as err:
        raise pytest.UsageError(str(err)) from None


def _serves(spec: TargetSpec) -> tuple[int, str]:
    if spec.kind != "local":
        return spec.tier, "declared"
    detected = detect_local_tier()
    if spec.detect_tier:
        return detected.tier, detected.how
    if spec.tier >= 2 and detected.tier < 2:
        raise TargetUnhealthyError(
            f"declares {tier_label(spec.tier)} but no CUDA device is usable here "
            f"({detected.how})", target=spec.name)
    return spec.tier, "declared"


def _allure_listening() -> bool:
    """Whether an allure-pytest listener is already registered in this process.

    Called before allure-pytest's own configure, so a listener found belongs to
    another (enclosing) pytest session.
    """
    try:
        from allure_commons import plugin_manager
        from allure_pytest.listener import AllureListener
    except ImportError:
        return False
    return any(isinstance(p, AllureListener) for p in plugin_manager.get_plugins())


def _exit_on(err: HilError) -> None:
    from hil.progress import printable

    pytest.exit(f"hil: {printable(str(err))}", returncode=int(err.exit_code))


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """An ssh target's connection starts opening now, in the background.

    Its handshake then overlaps the loading of conftests and the configure
    hooks; the session takes it up (:func:`hil.sshconn.connect`).  Anything
    wrong with the target is left for configure to report.
    """
    _labgrid_plugin_off_unless_asked(early_config)
    ns = early_config.known_args_namespace
    if getattr(ns, "hil_plan", False) or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    name = getattr(ns, "hil_target", None) or os.environ.get("HIL_TARGET") or DEFAULT_TARGET
    folder = getattr(ns, "hil_targets", None)
    try:
        spec = load_inventory(early_config.rootpath, Path(folder) if folder else None).get(name)
    except ConfigError:
        return
    if spec.labgrid is not None:
        return  # the boards are known once their places are acquired
    if spec.kind == "ssh" and spec.ssh.hosts:
        from hil.session.pool import connect_boards_in_background

        connect_boards_in_background(spec)
    elif spec.kind == "ssh":
        from hil.ssh.connection import connect_in_background

        connect_in_background(spec)


def _labgrid_plugin_off_unless_asked(early_config: pytest.Config) -> None:
    """Unregister labgrid's own pytest plugin unless a labgrid environment is given.

    labgrid (the ``lab`` extra) installs a pytest plugin for its environments
    (``--lg-env``/``$LG_ENV``).  Without one it only reconfigures logging, and
    its process-wide step logger fails a second session in one process (a
    pytester inline run).  pytest-hil talks to the coordinator itself.
    """
    manager = early_config.pluginmanager
    if manager.get_plugin("labgrid") is None:
        return
    if getattr(early_config.known_args_namespace, "lg_env", None) or os.environ.get("LG_ENV"):
        return
    manager.unregister(name="labgrid")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller resolved everything
        _configure_worker(config, workerinput.get(WORKERINPUT_KEY))
        return
    spec, root = _resolve_target(config)
    for option, given in (("--hil-confirm-failures", config.getoption("hil_confirm_failures")),
                          ("--hil-hold-on-failure", config.getoption("hil_hold_on_failure"))):
        if given and not spec.ssh.hosts and spec.labgrid is None:
            raise pytest.UsageError(
                f"{option} works on board pools: target '{spec.name}' has no [ssh] hosts "
                "(one board can be a pool of one: hosts = [\"its-alias\"])")
    if spec.is_container:
        _no_local_workers(config)
    plan = bool(config.getoption("hil_plan"))
    try:
        tier, how = _serves(spec)
        required = config.getoption("hil_require_tier")
        if required and tier < required and not plan:
            raise TargetUnhealthyError(
                f"serves tier {tier} ({how}) but --hil-require-tier {required} was given",
                target=spec.name)
    except HilError as err:
        _exit_on(err)
        raise  # unreachable: pytest.exit raises
    reports = Path(config.getoption("hil_reports") or config.rootpath / "reports")
    allure_dir: Path | None = None
    has_allure = config.pluginmanager.hasplugin("allure_pytest")
    given = config.getoption("allure_report_dir") if has_allure else None
    # Allure by default only for the outermost session of a process: allure-pytest's
    # listeners share one process-wide hook relay, so a nested in-process session
    # (pytester's inline runs, parseconfigure) with a listener of its own would get
    # the enclosing session's fixture events and fail on them.
    if has_allure and not config.getoption("hil_no_allure") and not plan and (
            given or not _allure_listening()):
        allure_dir = Path(given) if given else reports / "allure-results"
        keep = config.getoption("hil_keep_results")
        if spec.kind == "local":
            config.option.allure_report_dir = str(allure_dir)
            config.option.clean_alluredir = not keep
        else:
            # The container writes the results; session.py copies them here.
            config.option.allure_report_dir = None
    elif has_allure and config.getoption("hil_no_allure"):
        # allure-pytest itself would still write what --alluredir names.
        config.option.allure_report_dir = None
    settings = HilSettings(
        target=spec, root=root, tier=tier, tier_how=how, reports=reports, allure_dir=allure_dir,
        keep_results=bool(config.getoption("hil_keep_results")), plan=plan,
    )
    config.stash[SETTINGS_KEY] = settings
    os.environ["HIL_TARGET"] = spec.name
    os.environ["HIL_TIER"] = str(tier)
    environment = {"git.commit": git_commit(config.rootpath), "tier.detection": how}
    gate_allure = str(allure_dir) if spec.kind == "local" and allure_dir else None
    from hil.session.routing import ROUTING_KEY

    routing = config.stash.get(ROUTING_KEY, None)
    # Routed: each target's container gates its own tests (the plan shows them per target).
    config.pluginmanager.register(
        TierGate(spec.name, 3 if routing else tier, gate_allure, environment), "hil-tiergate")
    _register_shards(config, spec)
    from hil.evidence.plugin import register as register_gpu_evidence

    register_gpu_evidence(config, settings)
    if (routing is not None or spec.is_container) and not plan:
        # One controller for every container session: a target, a pool, a routed run.
        from hil.session.controller import make_controller

        config.pluginmanager.register(make_controller(config, settings), "hil-session")


def _register_shards(config: pytest.Config, spec: TargetSpec) -> None:
    """Durations are recorded in every session; ``--hil-shard`` filters here for ``local``."""
    from hil.session.shards import DurationRecorder, shard_levels, split_durations

    levels = shard_levels(config)
    config.pluginmanager.register(DurationRecorder(config), "hil-durations")
    if levels and spec.kind == "local":
        config.pluginmanager.register(ShareFilter(levels, split_durations(config)), "hil-share")


#: Where a local xdist worker finds what its controller resolved (``workerinput``).
WORKERINPUT_KEY = "hil"


def _no_local_workers(config: pytest.Config) -> None:
    """No xdist workers here for a container target: ``-n`` runs xdist in the container.

    pytest-xdist resolved ``-n`` into test environments in its
    ``pytest_cmdline_main``; without them its controller is not started (its
    configure runs after this one).  The options themselves travel to the
    container with the rest of the command line.
    """
    if getattr(config.option, "tx", None):
        config.option.tx = []
    if getattr(config.option, "dist", "no") != "no":
        config.option.dist = "no"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist (local target): each worker gets the target, tier and Allure folder resolved here."""
    settings = node.config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return
    local_allure = settings.allure_dir if settings.target.kind == "local" else None
    share = node.config.pluginmanager.get_plugin("hil-share")
    node.workerinput[WORKERINPUT_KEY] = {
        "target": settings.target.name, "tier": settings.tier,
        "allure_dir": str(local_allure) if local_allure else None,
        "share": [share.levels, share.durations] if share is not None else None}


def _configure_worker(config: pytest.Config, given: dict[str, Any] | None) -> None:
    """A local xdist worker collects and runs the tests: the tier gate and Allure go here too."""
    if not given:
        return
    allure_dir = given.get("allure_dir")
    if allure_dir and config.pluginmanager.hasplugin("allure_pytest"):
        config.option.allure_report_dir = allure_dir
        config.option.clean_alluredir = False  # the controller cleaned it
    config.pluginmanager.register(
        TierGate(given["target"], int(given["tier"]), allure_dir, write_environment=False),
        "hil-tiergate")
    if given.get("share"):
        levels, durations = given["share"]
        config.pluginmanager.register(ShareFilter(levels, durations), "hil-share")


def pytest_report_header(config: pytest.Config) -> str | list[str] | None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return None
    spec = settings.target
    line = f"hil target: {spec.name} ({spec.kind}, serves tier {settings.tier}: {settings.tier_how})"
    from hil.session.routing import ROUTING_KEY

    routing = config.stash.get(ROUTING_KEY, None)
    if routing is not None and routing.left_out:  # `auto` never leaves a target out silently
        return [line, "hil routing: left out " + "; ".join(routing.left_out)]
    return line


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    settings = session.config.stash.get(SETTINGS_KEY, None)
    if settings is None or not settings.plan:
        return None
    _print_plan(session, settings)
    return True


def _print_plan(session: pytest.Session, settings: HilSettings) -> None:
    write = session.config.get_terminal_writer().line
    spec = settings.target
    run = skipped = 0
    write("")
    write(f"hil plan: target '{spec.name}' ({spec.kind}, serves tier {settings.tier})")
    from hil.session.routing import ROUTING_KEY

    routing = session.config.stash.get(ROUTING_KEY, None)
    if routing is not None:
        write("hil plan: routing " + ", ".join(
            f"tier{t} -> {name}" for t, name in sorted(routing.route.items())))
    served = {t.name: t.tier for t in routing.targets} if routing is not None else {}
    from hil.session.shards import planned_places

    places = planned_places(session.config, spec.ssh.boards, [i.nodeid for i in session.items],
                            spec.is_container)
    outside = 0
    for item in session.items:
        place = places.get(item.nodeid, "")
        if place is None:
            outside += 1  # another shard's
            continue
        skip = item.get_closest_marker("skip")
        tier = item_tier(item)
        goes_to = routing.target_of(tier) if routing is not None else spec.name
        if skip is None and routing is not None and tier > served[goes_to]:
            write(f"  SKIP {item.nodeid}: {skip_reason(tier, goes_to, served[goes_to])}")
            skipped += 1
        elif skip is not None:
            reason = skip.kwargs.get("reason") or (skip.args[0] if skip.args else "unconditional")
            write(f"  SKIP {item.nodeid}: {reason}")
            skipped += 1
        else:
            on = f" on {place}" if place else ""
            write(f"  RUN  {item.nodeid} -> {goes_to}{on} (tier{tier})")
            run += 1
    if outside:
        write(f"hil plan: {outside} test(s) belong to the other shards")
    write(f"hil plan: {run} to run, {skipped} skipped; nothing was run")
