"""The checkout on the board: rsync over the session's connection, skipped when unchanged.

The board keeps the digest of its last completed sync (a marker file the
run script writes once the run starts, :func:`hil.ssh.sync.sync_marker`), so
a checkout whose files have not changed since costs no rsync at all.
"""

from __future__ import annotations

from pathlib import Path

from hil.backends.jetson.preflight import BoardState
from hil.config import TargetSpec
from hil.errors import ConfigError, ConnectionLostError
from hil.progress import Progress
from hil.ssh.sync import Rsync, SyncStats, human_bytes, list_files, tree_digest


def sync_checkout(rsync: Rsync, spec: TargetSpec, root: Path, board: BoardState,
                  progress: Progress) -> SyncStats:
    """rsync ``root`` to the board's checked ``remote_dir`` unless the board has it already.

    After a push, ``board.pending_marker`` holds the digest for the next run to record.
    """
    if not board.remote_dir:
        raise ConfigError("remote_dir not checked (preflight did not run)", target=spec.name)
    files = list_files(root, spec.ssh.include)
    digest = tree_digest(root, files)
    if digest and digest == board.synced:
        stats = SyncStats(files=len(files.paths or ()), skipped_links=tuple(files.skipped_links))
        progress.step(f"{spec.name}:{board.remote_dir} is up to date "
                      f"({stats.files} files unchanged since the last sync)")
        return stats
    try:
        stats = rsync.push(root, board.remote_dir, excludes=spec.ssh.excludes, files=files)
        board.pending_marker = digest
    except ConnectionLostError as err:
        raise ConnectionLostError(f"connection lost during sync: {err.message}",
                                  target=spec.name) from err
    progress.step(f"synced to {spec.name}:{board.remote_dir}: {stats.transferred} of "
                  f"{stats.files} files changed, {stats.deleted} deleted, "
                  f"{human_bytes(stats.bytes_sent)} sent")
    for link in stats.skipped_links:
        progress.detail(f"skipped symlink pointing outside the checkout: {link}")
    return stats
