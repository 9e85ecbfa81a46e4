"""Failed writes leave nothing half-written and say what to do (file too large, atomic manifests)."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from geobimors.files import FAT32_MAX_FILE, file_size_limit, too_large_message
from geobimors.run.store import MANIFEST, RunStore, _atomic_write_text, store_path


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    with pytest.raises(UnicodeEncodeError):  # the temporary file is created, then the write fails
        _atomic_write_text(path, "\udcff")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        _atomic_write_text(path, "new \udcff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"] and path.read_text() == "old"
    _atomic_write_text(path, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"] and path.read_text() == "new"


def test_a_run_store_whose_manifest_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.gpkg"
    monkeypatch.setattr(json, "dumps", lambda *a, **k: "\udcff")  # an unwritable manifest
    with pytest.raises(UnicodeEncodeError):
        RunStore.open(out, "fingerprint")
    assert not [p.name for p in store_path(out).iterdir() if p.name != MANIFEST]
    assert not (store_path(out) / MANIFEST).exists()


def test_too_large_messages(tmp_path: Path) -> None:
    out = tmp_path / "out.gpkg"
    small = tmp_path / "small.tmp"
    small.write_bytes(b"x" * 1000)
    assert file_size_limit() is None  # the test process itself has no limit
    assert too_large_message(out, OSError("Failed to commit transaction"), small, "kept") is None
    assert too_large_message(out, OSError(errno.ENOSPC, "No space left on device"), small, "kept") is None
    fat = tmp_path / "fat.tmp"
    with open(fat, "wb") as sink:  # sparse: no disk space used
        sink.truncate(FAT32_MAX_FILE)
    message = too_large_message(out, OSError("Failed to commit transaction"), fat, "finished batches are kept")
    assert message is not None and message.startswith(f"{out} is larger than its file system allows (FAT32")
    assert message.endswith("; finished batches are kept") and "\n" not in message
    efbig = too_large_message(out, OSError(errno.EFBIG, "File too large"), small, "kept")
    assert efbig is not None and "FAT32" in efbig


def test_the_file_size_limit_is_named_with_its_value(tmp_path: Path) -> None:
    code = (
        "import resource, errno, pathlib\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from geobimors.files import too_large_message\n"
        f"p = pathlib.Path({str(tmp_path / 'x')!r})\n"
        "print(too_large_message(p, OSError(errno.EFBIG, 'File too large'), p, 'kept'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "file-size limit (ulimit -f: 4,096 bytes); raise it (ulimit -f unlimited)" in done.stdout
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY
