"""The in-target side of pytest-hil: runs pytest and streams its reports.

This package is the only part of ``hil`` loaded inside a container, where
pytest-hil itself is not installed: its modules import one another by
relative imports and nothing beyond the standard library and pytest, so the
same files run as ``hil.worker`` on a host and as ``hil_worker`` in a target
(mounted as a folder, see :func:`hil.backends.base.worker_files`).  One job a
module: :mod:`.protocol` (the event kinds, shared with the host),
:mod:`.events` (the stream), :mod:`.allure`, :mod:`.gate` (the tier gate),
:mod:`.xdist`, :mod:`.resume` (resume, shares, routes), :mod:`.probe`,
:mod:`.tiers` (the tier vocabulary; ``hil.tiers`` is this very module) and
:mod:`.main` (the run).

Run as ``python3 /hil/lib/hil_worker/__main__.py PYTEST_ARGS...`` with these
variables:

``HIL_TARGET`` / ``HIL_TIER``
    the target's name and the tier it serves;
``HIL_OUT``
    the results folder (default ``/hil/out``): ``pytest.log`` (pytest's own
    terminal output), ``allure-results/``, ``events.jsonl``;
``HIL_ENVIRONMENT``
    extra ``key=value`` lines for Allure's ``environment.properties``;
``HIL_EVENTS``
    ``compact`` lets passed phases without output travel in the ``finish``
    event (see :class:`EventStream`); unset, every report is a ``logreport``;
``HIL_ALLURE_RESULTS``
    ``events`` sends each Allure result on the channel (an ``allure`` event)
    for the controller to write, instead of writing it here: a container's
    file writes are slow (its memory cgroup throttles dirty pages; Colima's
    shared folders cross a VM), and a streamed result is as safe as a written
    one once the controller has it.  Attachments are still written here.
    ``off`` records no Allure results at all (the host's ``--hil-no-allure``);
``HIL_EVENT_INTERVAL_MS``
    how long events may wait to be written together (default 20; ``0``
    writes at every test's start);
``HIL_CAPTURE``
    a folder of the container (not the results folder) where pytest's fd
    capture keeps its files instead of unlinked temporary ones, so that the
    output of a test that kills the interpreter survives it (the container's
    entry script copies the folder into the results when the worker did not
    end; see ``hil.backends.base.CONTAINER_ENTRY``);
``HIL_RESUME``
    set by the controller after a test crashed the interpreter: which tests
    this fresh container runs (those the crashed one did not reach, in their
    order) and the sequence number its events continue from (see
    :func:`encode_resume`); ``pytest.log`` and ``events.jsonl`` are appended to.

Under pytest-xdist (``-n``) this process is xdist's controller: its hooks see
every worker's reports, which stream as usual, and the workers load
:mod:`.xdist` as a plugin (the tier gate, Allure's writer).

Channel: standard output carries nothing but events, one JSON object per line
(see :mod:`.protocol`), pytest's terminal output is moved to ``pytest.log``,
and standard error is left alone for the diagnostics a user must see.  Reports
are serialized with pytest's own ``pytest_report_to_serializable`` hook.
"""

from __future__ import annotations

from .allure import AllureResultsLogger, parse_environment, record_allure, write_environment
from .events import EventStream, only_pytest_implements
from .gate import TierGate
from .main import main
from .probe import probe
from .protocol import PROTOCOL
from .resume import (
    RouteFilter,
    ShareFilter,
    decode_resume,
    decode_share,
    encode_resume,
    encode_share,
    share_of,
    split_shares,
)

__all__ = ["PROTOCOL", "AllureResultsLogger", "EventStream", "RouteFilter", "ShareFilter",
           "TierGate", "decode_resume", "decode_share", "encode_resume", "encode_share", "main",
           "only_pytest_implements", "parse_environment", "probe", "record_allure", "share_of",
           "split_shares", "write_environment"]
