"""Splitting a suite into parts: ``--hil-shard I/N`` and the durations the split is balanced by.

The split itself is :func:`hil.worker.share_of`: it runs where the tests are
collected (in the container, or here for the local target), over the tests
selected there, so every part splits the same list the same way.  The
durations come from earlier runs, kept in pytest's cache under
:data:`DURATIONS_KEY` by :class:`DurationRecorder`; :func:`split_durations` is
the one form of them every split of a session takes (a container's, the local
target's and ``--hil-plan``'s), so the plan shows the parts that will run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from hil.worker import encode_share

#: pytest cache key of the recorded test durations: node id -> seconds (all phases).
DURATIONS_KEY = "hil/durations"
HELP_SHARD = ("run only the I-th of N duration-balanced parts of the suite (I in 1..N), "
              "e.g. 2/3 in the second job of a CI matrix of three")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``; a usage error naming the option for anything else."""
    m = _SHARD.match(text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise pytest.UsageError(
            f"--hil-shard: expected I/N with 1 <= I <= N (e.g. 2/3), got {text!r}")
    return int(m[1]), int(m[2])


def shard_levels(config: pytest.Config) -> list[list[int]]:
    """The split levels ``--hil-shard`` asks for (0-based), ``[]`` without it."""
    given = config.getoption("hil_shard", None)
    if not given:
        return []
    index, count = parse_shard(given)
    return [[index - 1, count]]


def recorded_durations(config: pytest.Config) -> dict[str, float]:
    """The durations recorded in earlier runs (empty under ``-p no:cacheprovider``)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return {}
    data = cache.get(DURATIONS_KEY, {})
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


#: Longest ``HIL_SHARE`` durations sent: the run script is one argument of the board's
#: shell, which Linux caps at 128 KiB (MAX_ARG_STRLEN); the levels add a few bytes.
SHARE_LIMIT = 64 * 1024


def split_durations(config: pytest.Config) -> dict[str, float]:
    """The durations every split of this session is balanced by, wherever it runs.

    The recorded ones to 0.01 s, which keeps ``HIL_SHARE`` short; past
    :data:`SHARE_LIMIT` (tens of thousands of recorded tests) none, so the
    split falls back to file order, the same for every part, rather than fail.
    """
    durations = {k: round(v, 2) for k, v in recorded_durations(config).items()}
    return durations if len(encode_share([], durations)) <= SHARE_LIMIT else {}


def share_env(config: pytest.Config, levels: list[list[int]]) -> dict[str, str]:
    """``HIL_SHARE`` for a container that runs the part ``levels`` name ({} for the whole)."""
    if not levels or all(count <= 1 for _, count in levels):
        return {}
    return {"HIL_SHARE": encode_share(levels, split_durations(config))}


class DurationRecorder:
    """Records each test's duration (setup + call + teardown) into pytest's cache.

    Registered for every session, local or remote (reports arrive here either
    way), so a pool or a shard run is balanced by whatever ran before.
    Earlier records of tests not run this time are kept.  A shard records
    nothing: every shard of a suite must split by the same durations.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seen: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Add one phase's duration to its test's total."""
        self.seen[report.nodeid] = self.seen.get(report.nodeid, 0.0) + float(report.duration)

    def pytest_sessionfinish(self, session: Any) -> None:
        """Merge this run's durations into the cache."""
        cache = getattr(self.config, "cache", None)
        if cache is None or not self.seen or shard_levels(self.config):
            # A shard leaves the record as it found it: the next shard of the same CI run
            # (or of the same checkout) must split by the same durations.
            return
        merged = recorded_durations(self.config)
        merged.update({k: round(v, 4) for k, v in self.seen.items()})
        cache.set(DURATIONS_KEY, merged)


def planned_places(config: pytest.Config, boards: tuple[str, ...], ids: list[str],
                   container: bool) -> dict[str, str | None]:
    """For ``--hil-plan``: node id -> the board it would run on ("" without a pool), or None
    when it is outside this shard.  Every board assumed healthy."""
    from hil.worker import share_of

    levels = shard_levels(config)
    durations = split_durations(config)
    # The local target's own filter has already taken the shard out of ``ids``.
    mine = share_of(ids, durations, levels) if container and levels else ids
    places: dict[str, str | None] = dict.fromkeys(ids)
    if len(boards) > 1:
        for index, board in enumerate(boards):
            for nodeid in share_of(mine, durations, [[index, len(boards)]]):
                places[nodeid] = board
    else:
        places.update(dict.fromkeys(mine, ""))
    return places
