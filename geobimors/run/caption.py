"""Captioning an image folder or the chips of a scene (``geobimors caption``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geobimors.errors import InputError, check_at_least_one
from geobimors.models.captions import Captioner
from geobimors.progress import Progress
from geobimors.raster.images import IMAGE_SUFFIXES, read_rgb
from geobimors.raster.read import ChipReader
from geobimors.run.plan import MapSettings, plan_reading


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"no images in {folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def caption_source(
    source: Path,
    captioner: Captioner,
    model: str,
    chip_settings: dict[str, Any],
    batch_size: int = 16,
    progress_mode: str = "bar",
) -> tuple[list[tuple[str, str]], int]:
    """Caption every image of a folder, or every valid chip of a scene, through the cache.

    Returns:
        (source, caption) rows and how many captions came from the cache.
    """
    check_at_least_one(batch_size, "--batch-size")
    hits_before = captioner.cache_hits
    rows: list[tuple[str, str]] = []
    if source.is_dir():
        files = _folder_images(source)
        progress = Progress(len(files), progress_mode, desc="images")
        try:
            for start in range(0, len(files), batch_size):
                batch = files[start : start + batch_size]
                captions = captioner.caption([read_rgb(p) for p in batch], batch_size)
                rows += [(str(p), c) for p, c in zip(batch, captions)]
                progress.update(len(batch))
        finally:
            progress.close()
    else:
        _, grid, read, _ = plan_reading(MapSettings(scene=str(source), **chip_settings), model)
        reader = ChipReader(read)
        progress = Progress(len(grid), progress_mode, desc="chips")
        try:
            for start in range(0, len(grid), batch_size):
                chips = list(grid.chips(start, start + batch_size))
                read_batch = reader.read_batch(chips)
                kept = [c for c, k in zip(chips, read_batch.keep) if k]
                captions = captioner.caption(read_batch.pixels[read_batch.keep], batch_size) if kept else []
                rows += [(f"row {c.row}, col {c.col}", text) for c, text in zip(kept, captions)]
                progress.update(len(chips))
        finally:
            progress.close()
    return rows, captioner.cache_hits - hits_before
