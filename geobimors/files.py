"""Bounded reads of the small files users hand in: labels, config, list, STAC and manifest files.

Only regular files, up to a size limit, opened without blocking: a labels "file" that is
``/dev/zero``, a FIFO or a multi-GB file is refused with a one-line message instead of
growing memory until the kernel stops the run.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from geobimors.errors import InputError, OutputError


def default_cache_dir() -> Path:
    """Cache folder (captions, text features): ``$GEOBIMORS_CACHE_DIR``, else ``~/.cache/geobimors``."""
    return Path(os.environ.get("GEOBIMORS_CACHE_DIR", Path.home() / ".cache" / "geobimors"))


# Largest file FAT32 (USB sticks, SD cards) can hold.
FAT32_MAX_FILE = 4 * 1024**3 - 1
_MIB = 1024 * 1024


def file_size_limit() -> int | None:
    """The process's file-size limit in bytes (``ulimit -f``), or ``None`` when there is none."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def too_large_message(output: Path, exc: BaseException, written: Path, rest: str) -> str | None:
    """The one-line error for a write that failed because the file grew too large, else ``None``.

    A file can outgrow this process's file-size limit (``ulimit -f``: the write fails with EFBIG,
    which GDAL reports only as a failed commit) or the file system's largest file (FAT32: 4 GiB).

    Args:
        output: the file the user asked for.
        exc: the error the write raised.
        written: the file being written when it failed (a temporary file).
        rest: what happens to the work (e.g. "finished batches are kept").
    """
    size = _size(written)
    limit = file_size_limit()
    efbig = getattr(exc, "errno", None) == errno.EFBIG or "File too large" in str(exc)
    if limit is not None and (efbig or size >= limit - _MIB):
        return (
            f"{output} outgrew this process's file-size limit (ulimit -f: {limit:,} bytes); raise it "
            f"(ulimit -f unlimited) or write a smaller output (a larger --chip-size, a smaller scene); {rest}"
        )
    if efbig or size >= FAT32_MAX_FILE - _MIB:
        return (
            f"{output} is larger than its file system allows (FAT32 holds at most 4 GiB per file); write it "
            f"to a disk formatted ext4, NTFS, APFS or exFAT, or write a smaller output; {rest}"
        )
    return None


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from an open file descriptor."""
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for messages (``a named pipe (FIFO)``)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def describe_size(n: int) -> str:
    """A byte count for messages (``4 MB``)."""
    return f"{n / 1024 / 1024:g} MB" if n >= 1024 * 1024 else f"{n / 1024:g} kB"


def check_regular_file(path: str | os.PathLike[str], what: str) -> None:
    """Check that ``path`` is a regular file (not a directory, FIFO or device), without blocking.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError: as ``open`` would.
        InputError: for FIFOs, devices and sockets.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", os.fspath(path))
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {os.fspath(path)} is {describe_mode(mode)}, not a regular file; pass a file")


def read_regular_file(path: str | os.PathLike[str], what: str, limit: int) -> bytes:
    """Read a small file (labels, config, list, STAC item): a regular file of at most ``limit`` bytes.

    Args:
        path: the file.
        what: what the file is, for messages (``labels file``).
        limit: largest size accepted, in bytes.

    Returns:
        The file's bytes.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError: as ``open`` would
            (callers phrase their own messages).
        InputError: for FIFOs, devices (``/dev/zero``), sockets, and files
            larger than ``limit`` (also one that grows while read).
    """
    text = os.fspath(path)
    fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", text)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what} {text} is {describe_mode(info.st_mode)}, not a regular file; pass a text file")
        if info.st_size > limit:
            raise InputError(
                f"{what} {text} is {describe_size(info.st_size)}, more than the {describe_size(limit)} "
                f"a {what} may have; check that it is the right file"
            )
        data = read_fd(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(
            f"{what} {text} grew past {describe_size(limit)} while it was read; check that it is the right file"
        )
    return data


def check_output_file(out: Path, overwrite: bool, suffix: str, choose: str = "path") -> Path:
    """Check that an output file can be written (shared by every command that writes one).

    Its folder must exist and be writable, it must not be a folder, and it must not exist
    unless ``overwrite``.

    Args:
        out: the output path (its suffix already checked by the caller).
        overwrite: replacing an existing file is allowed.
        suffix: the file type, for messages (``.gpkg``).
        choose: what the user should choose instead, for messages (``-o path``).

    Raises:
        OutputError: with a one-line message naming the problem.
    """
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist; create it or choose another {choose}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable; choose another {choose}")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a {suffix} file path")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it or choose another {choose}")
    return out
