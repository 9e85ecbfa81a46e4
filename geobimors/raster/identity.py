"""The identity of a scene's files: lets a resumed run notice that the scene was rewritten.

A run's fingerprint (:meth:`geobimors.run.plan.ScenePlan.fingerprint`,
:meth:`geobimors.embeddings.embed.EmbedPlan.fingerprint`) decides whether an interrupted
run's stored parts may be reused. The scene's path, size and transform alone do not change
when its pixels are rewritten in place, so the fingerprint also takes
:func:`scene_identity`: the size and modification time (nanoseconds) of every local file
GDAL reads for the scene: the file itself, its sidecars (``.ovr``, ``.msk``, ``.aux.xml``,
world files) and, for a VRT, its direct sources (what GDAL's file list names; sources of
nested VRTs are not followed). An unchanged file keeps its identity from run to run (a plain
re-run resumes); a rewritten one gets another (the resume is refused).

Limits: a scene that cannot be stat-ed (a URL, a network ``/vsi`` path, ``/vsimem/``) has no
identity, and its fingerprint stays as before (path, shape and transform). A local archive
(``/vsizip/tiles.zip/a.tif``) counts as its archive file. A rewrite that keeps the size and
lands in the same modification-time tick of a coarse file system (FAT: 2 s) goes unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from geobimors.raster.safety import _local_file_of, is_network, network_guard


def scene_identity(path: str) -> str | None:
    """A digest of the names, sizes and modification times of the local files GDAL reads for a scene.

    Args:
        path: the path GDAL opens (:attr:`geobimors.raster.scene.SceneInfo.path`).

    Returns:
        20 hex digits, or ``None`` when the scene is not a local file (a URL, a network ``/vsi``
        path, ``/vsimem/``, ...): such scenes cannot be stat-ed and keep today's fingerprint.
    """
    if _local_file(path) is None:
        return None
    entries: dict[str, list[int] | str] = {}
    for name in (path, *_gdal_files(path)):
        local = _local_file(name)
        if local is not None:
            entries.setdefault(os.path.abspath(local), _stat(local))
    payload = json.dumps(sorted(entries.items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _local_file(name: str) -> Path | None:
    """The local file that ``name`` reads (an archive for ``/vsizip/...``), or ``None`` (remote, in memory)."""
    if is_network(name):
        return None
    if name.startswith("/vsi") or name.lower().startswith("vrt://"):
        return _local_file_of(name, None)
    if "://" in name:
        return None
    return Path(name)


def _gdal_files(path: str) -> list[str]:
    """The files GDAL names for a dataset (itself, sidecars, a VRT's sources); ``[]`` when it does not open.

    Opened with network I/O refused whatever the run allows: listing files never contacts a host
    (GDAL opens a VRT's sources lazily, so the list needs none of them).
    """
    import rasterio

    try:
        with network_guard(False), rasterio.open(path) as ds:
            return [str(name) for name in ds.files]
    except Exception:  # the main file's stat still stands; open_scene reports the real errors
        return []


def _stat(path: Path) -> list[int] | str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}"
    return [st.st_size, st.st_mtime_ns]
