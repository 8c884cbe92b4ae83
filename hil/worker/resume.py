"""Which tests this container runs: the rest after a crash, a board's share, a route's tier."""

from __future__ import annotations

import base64
import json
import os
import zlib
from typing import Any

import pytest

from .tiers import item_tier


def encode_resume(ids: list[str], after: str, how: str, seq: int) -> str:
    """``HIL_RESUME``: the tests a fresh container runs after ``after`` crashed, compressed.

    ``seq`` is the last event number handled, which the new events continue from.
    """
    return _pack({"ids": ids, "after": after, "how": how, "n": seq})


def _pack(payload: dict[str, Any]) -> str:
    """A JSON object as one compressed environment value (base64 of zlib)."""
    data = json.dumps(payload).encode("utf-8")
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def _unpack(value: str) -> dict[str, Any]:
    """The inverse of :func:`_pack`."""
    data: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(value)))
    return data


def decode_resume(value: str) -> dict[str, Any]:
    """The inverse of :func:`encode_resume`."""
    return _unpack(value)


class ResumeFilter:
    """Runs only the tests a crashed run did not reach, in the order it would have.

    The rest are left out silently (not "deselected": the first run counted
    them), after every other plugin's selection (``-k``, ``--lf``, ...).
    """

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        by_id = {item.nodeid: item for item in items}
        items[:] = [by_id[nodeid] for nodeid in self.ids if nodeid in by_id]


# -- shares: the part of a suite one board (or one CI shard) runs ---------------------------

def split_shares(ids: list[str], durations: dict[str, float], count: int) -> list[list[str]]:
    """``ids`` split into ``count`` parts of about equal run time, each in collection order.

    With durations recorded in earlier runs: longest first onto the least
    loaded part (ties: the one with fewest tests, then the lowest index, so
    tests recorded as taking no time are spread too); a test with no record counts as the
    mean of those recorded.  With none recorded: ``count`` consecutive runs of
    the collection order (file order), sizes differing by one at most.  The
    same inputs always give the same split, so every board (or shard) that
    collects the same tests computes the same parts.
    """
    if count <= 1:
        return [list(ids)]
    known = [durations[i] for i in ids if i in durations]
    if not known:
        size, extra = divmod(len(ids), count)
        parts, start = [], 0
        for k in range(count):
            end = start + size + (1 if k < extra else 0)
            parts.append(list(ids[start:end]))
            start = end
        return parts
    mean = sum(known) / len(known)
    cost = [durations.get(i, mean) for i in ids]
    loads = [0.0] * count
    sizes = [0] * count
    owner = [0] * len(ids)
    for place in sorted(range(len(ids)), key=lambda p: (-cost[p], p)):
        k = min(range(count), key=lambda b: (loads[b], sizes[b], b))
        loads[k] += cost[place]
        sizes[k] += 1
        owner[place] = k
    return [[i for place, i in enumerate(ids) if owner[place] == k] for k in range(count)]


def share_of(ids: list[str], durations: dict[str, float], levels: list[list[int]]) -> list[str]:
    """The part of ``ids`` that ``levels`` name: ``[[index, count], ...]``, 0-based, nested.

    ``[[0, 3]]`` is the first of three parts; ``[[1, 3], [0, 2]]`` the first
    half of the second third (a CI shard spread over a pool of two boards).
    """
    for index, count in levels:
        ids = split_shares(ids, durations, count)[index]
    return ids


def encode_share(levels: list[list[int]], durations: dict[str, float],
                 ids: list[str] | None = None) -> str:
    """``HIL_SHARE``: which part of the collected tests this container runs, compressed.

    ``ids``, when given, names the tests outright (a re-run of failed tests).
    """
    payload: dict[str, Any] = {"levels": levels, "durations": durations}
    if ids is not None:
        payload["ids"] = ids
    return _pack(payload)


def decode_share(value: str) -> dict[str, Any]:
    """The inverse of :func:`encode_share`."""
    return _unpack(value)


class ShareFilter:
    """Runs only this board's (or shard's) part of the suite.

    The rest are left out silently (not "deselected": the other parts run
    them), after every other plugin's selection (``-k``, ``--lf``, ...), so
    every part splits the same selected list.
    """

    def __init__(self, levels: list[list[int]], durations: dict[str, float],
                 ids: list[str] | None = None) -> None:
        self.levels = levels
        self.durations = durations
        self.ids = ids

    @classmethod
    def from_env(cls) -> ShareFilter | None:
        """The filter ``HIL_SHARE`` asks for, if any."""
        value = os.environ.get("HIL_SHARE")
        if not value:
            return None
        data = decode_share(value)
        ids = data.get("ids")
        return cls([list(level) for level in data["levels"]],
                   {str(k): float(v) for k, v in data["durations"].items()},
                   [str(i) for i in ids] if isinstance(ids, list) else None)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.ids is not None:
            keep = set(self.ids)
        else:
            keep = set(share_of([item.nodeid for item in items], self.durations, self.levels))
        items[:] = [item for item in items if item.nodeid in keep]


class RouteFilter:
    """Runs only the tests routed to this target (``--target a,b``): ``HIL_ROUTE``.

    ``HIL_ROUTE`` maps each tier ("1", "2", "3") to the target its tests go
    to; this container keeps those whose tier maps to ``HIL_TARGET``.  The
    rest are left out silently: the other targets run them.
    """

    def __init__(self, route: dict[str, str], target: str) -> None:
        self.route = route
        self.target = target

    @classmethod
    def from_env(cls) -> RouteFilter | None:
        """The filter ``HIL_ROUTE`` asks for, if any."""
        value = os.environ.get("HIL_ROUTE")
        if not value:
            return None
        route = json.loads(value)
        return cls({str(k): str(v) for k, v in route.items()},
                   os.environ.get("HIL_TARGET", "container"))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = [item for item in items
                    if self.route.get(str(item_tier(item))) == self.target]


