"""The resumable sidecar store: one Parquet file per finished batch, next to the output.

A run writes each batch's records as soon as the batch finishes. Re-running
the same command after a crash or Ctrl-C skips the batches already stored.
The manifest records the plan's fingerprint so a store made with other
settings (scene, model, labels, grid, ...) is never mixed into the output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geobimors._version import __version__
from geobimors.errors import InputError, RunError
from geobimors.files import read_regular_file, too_large_message
from geobimors.run.tasks import BatchResult

MANIFEST = "manifest.json"


def store_path(output: str | os.PathLike[str]) -> Path:
    """The sidecar store directory of an output file."""
    out = Path(output)
    return out.with_name(out.name + ".partial")


def label_columns(top_k: int) -> list[tuple[str, str]]:
    """(label column, score column) names for ranks 1..k: label/score, label_2/score_2, ..."""
    return [("label", "score")] + [(f"label_{r}", f"score_{r}") for r in range(2, top_k + 1)]


def result_table(result: BatchResult, class_names: list[str], top_k: int) -> pa.Table:
    """Records of a batch result: one row per chip, labels as text, skipped chips without labels."""
    n = len(result.rows)
    windows = result.windows
    columns: dict[str, pa.Array] = {
        "batch": pa.array(np.full(n, result.batch.index, dtype=np.int32)),
        "row": pa.array(result.rows),
        "col": pa.array(result.cols),
        "col_off": pa.array(windows[:, 0].astype(np.int32)),
        "row_off": pa.array(windows[:, 1].astype(np.int32)),
        "width": pa.array(windows[:, 2].astype(np.int32)),
        "height": pa.array(windows[:, 3].astype(np.int32)),
        "valid_fraction": pa.array(result.valid_fraction.astype(np.float32)),
        "classified": pa.array(result.classified),
        "failed": pa.array(result.failed),
        "error": pa.array(result.errors or [None] * n, type=pa.string()),
    }
    names = np.asarray(class_names, dtype=object)
    classified = np.flatnonzero(result.classified)
    k_returned = result.top_index.shape[1]
    for rank, (label_col, score_col) in enumerate(label_columns(top_k)):
        labels = np.full(n, None, dtype=object)
        scores = np.full(n, np.nan, dtype=np.float32)
        if rank < k_returned and len(classified):
            labels[classified] = names[result.top_index[:, rank]]
            scores[classified] = result.top_score[:, rank]
        columns[label_col] = pa.array(labels, type=pa.string())
        columns[score_col] = pa.array(scores, mask=np.isnan(scores))
    if result.captions is not None:
        captions = np.full(n, None, dtype=object)
        captions[classified] = result.captions
        columns["caption"] = pa.array(captions, type=pa.string())
    return pa.table(columns)


class RunStore:
    """Per-batch Parquet parts of one run, in a directory beside the output.

    Args:
        directory: the store directory.
        fingerprint: the plan fingerprint the parts belong to.
    """

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, output: str | os.PathLike[str], fingerprint: str, restart: bool = False) -> RunStore:
        """Open the store of ``output`` to resume it, or create a new one.

        Raises:
            InputError: if a store made with other settings exists and
                ``restart`` is false.
        """
        return cls.open_directory(store_path(output), fingerprint, restart)

    @classmethod
    def open_directory(cls, directory: Path, fingerprint: str, restart: bool = False) -> RunStore:
        """Open the store in ``directory`` to resume it, or create it (see :meth:`open`).

        Raises:
            InputError: if a store made with other settings exists and ``restart`` is false.
        """
        manifest = directory / MANIFEST
        if directory.exists() and restart:
            shutil.rmtree(directory)
        if manifest.is_file():
            try:
                found = json.loads(read_regular_file(manifest, "run manifest", 1024 * 1024)).get("fingerprint")
            except (OSError, ValueError, AttributeError, InputError):
                found = None
            if found != fingerprint:
                raise InputError(
                    f"{directory} holds an unfinished run with other settings or of an earlier version of the scene "
                    "file (scene and its size and modification time, model, labels, grid, ...); "
                    "re-run with --restart to discard it, or choose another output"
                )
            return cls(directory, fingerprint)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(manifest, json.dumps({"fingerprint": fingerprint, "geobimors_version": __version__}))
        return cls(directory, fingerprint)

    def part_path(self, index: int, kind: str = "batch") -> Path:
        """Path of part ``index`` of a kind (``batch`` records or ``captions``)."""
        return self.directory / f"{kind}-{index:08d}.parquet"

    def done(self, kind: str = "batch") -> set[int]:
        """Indexes of the parts already stored (``batch`` records or ``captions``)."""
        found = set()
        for path in self.directory.glob(f"{kind}-*.parquet"):
            try:
                found.add(int(path.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return found

    def write(self, index: int, table: pa.Table, kind: str = "batch") -> None:
        """Store a part atomically (a crash never leaves half a part)."""
        path = self.part_path(index, kind)
        tmp = path.with_name(path.name + ".tmp")
        try:
            # Our own file object: pyarrow keeps a path it opened itself open after a failed
            # write (disk full), which would hold the space and the file system.
            with open(tmp, "wb") as sink:
                pq.write_table(table, sink)
            os.replace(tmp, path)
        except OSError as exc:
            too_large = too_large_message(path, exc, tmp, "finished batches are kept")
            tmp.unlink(missing_ok=True)
            if too_large is not None:
                raise RunError(too_large) from exc
            full = exc.errno == errno.ENOSPC or "No space left" in str(exc)
            raise RunError(
                f"{'disk full' if full else 'cannot write'} while saving finished batches to {self.directory} "
                f"({exc.strerror or exc}); free space and run the same command again to resume"
            ) from exc

    def write_bytes(self, index: int, data: bytes, kind: str = "batch") -> None:
        """Store a part from its Parquet bytes (restored from a finished output), atomically."""
        path = self.part_path(index, kind)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def tables(self, kind: str = "batch", columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Stored parts in index order (only ``columns`` when given)."""
        for index in sorted(self.done(kind)):
            yield pq.read_table(self.part_path(index, kind), columns=columns)

    def captions(self) -> dict[int, str]:
        """Every stored caption, by linear chip index."""
        found: dict[int, str] = {}
        for table in self.tables("captions"):
            found.update(zip(table.column("chip").to_pylist(), table.column("caption").to_pylist()))
        return found

    def remove(self) -> None:
        """Delete the store (after the output is complete)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all; a failed write leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def captions_table(chips: np.ndarray, captions: list[str]) -> pa.Table:
    """A captions part: linear chip index and caption."""
    return pa.table({"chip": pa.array(chips.astype(np.int64)), "caption": pa.array(captions, type=pa.string())})


class _StaleLock(Exception):
    """The lock was won on a lock file that its previous holder had already removed."""


class RunLock:
    """An exclusive lock on an output: a second run writing the same file refuses.

    The lock is a :class:`filelock.FileLock` (``flock`` on Unix, ``LockFileEx`` on
    Windows) on ``OUTPUT.lock``, released by the operating system when the
    process ends in any way (a ``kill -9`` leaves no stale lock). The holder
    writes its pid into the file for the message others print.

    The holder removes the lock file *while it still holds the lock*, and a
    process that wins the lock checks that the file it locked is still the one
    at the path (same inode): a process that opened the old file just before it
    was removed finds it stale and tries again on the new one, so two runs can
    never both hold the lock.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        out = Path(output)
        self.path = out.with_name(out.name + ".lock")
        self.output = out
        self._lock: Any = None

    def _on_acquired(self, fd: int) -> None:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            raise _StaleLock() from None
        mine = os.fstat(fd)
        if (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            raise _StaleLock()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        for _ in range(1000):  # each retry follows a holder that just finished: a few at most
            lock = FileLock(
                self.path, timeout=0, thread_local=False, on_acquired=self._on_acquired, preserve_lock_file=True
            )
            try:
                lock.acquire()
            except _StaleLock:
                continue
            except Timeout:
                raise InputError(
                    f"another geobimors run (pid {self._holder()}) is writing {self.output}; "
                    "wait for it to finish or choose another output"
                ) from None
            self._lock = lock
            return self
        raise RunError(f"could not take the lock {self.path}: it keeps changing; is another program using it?")

    def _holder(self) -> str:
        """The holder's pid from the lock file (it writes it just after taking the lock: wait a moment)."""
        import time

        for _ in range(20):
            try:
                with open(self.path, "rb") as f:
                    text = f.read(32).decode(errors="replace").strip()
            except OSError:
                text = ""
            if text.isdigit():
                return text
            time.sleep(0.025)
        return "unknown"

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            # Removed while held (see the class docs), then released.
            self.path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
