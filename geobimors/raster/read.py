"""Windowed reads of chips: bands, nodata masks, padding, resampling, 8-bit scaling.

Reads never load a whole scene: each chip is one windowed read (overviews are
used by GDAL when a chip is downsampled). Every thread keeps its own open
dataset, because GDAL dataset handles must not be shared between threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from geobimors.raster.grid import Chip, ChipGrid
from geobimors.raster.scaling import ScaleRange, valid_mask

_local = threading.local()


def thread_dataset(path: str) -> rasterio.io.DatasetReader:
    """The calling thread's open handle on ``path`` (opened on first use)."""
    handles: dict[str, rasterio.io.DatasetReader] | None = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    ds = handles.get(path)
    if ds is None or ds.closed:
        ds = handles[path] = rasterio.open(path)
    return ds


def close_thread_datasets() -> None:
    """Close the calling thread's dataset handles."""
    for ds in getattr(_local, "handles", {}).values():
        ds.close()
    _local.handles = {}


@dataclass(frozen=True)
class ReadSpec:
    """Everything a task needs to read chips itself: small and picklable.

    Attributes:
        path: the scene path GDAL opens.
        grid: the chip grid.
        bands: 1-based band indexes for R, G, B.
        scale: scene-level range to 8 bits, or ``None`` to pass 8-bit data through.
        nodata: nodata value overriding the scene's masks, or ``None``.
        min_valid: chips with a smaller fraction of valid pixels are skipped.
    """

    path: str
    grid: ChipGrid
    bands: tuple[int, int, int]
    scale: ScaleRange | None
    nodata: float | None = None
    min_valid: float = 0.5

    @property
    def resampling(self) -> Resampling:
        """Average when shrinking chips, bilinear when enlarging, nearest otherwise."""
        g = self.grid
        if g.out_width < g.chip_width or g.out_height < g.chip_height:
            return Resampling.average
        if g.out_width > g.chip_width or g.out_height > g.chip_height:
            return Resampling.bilinear
        return Resampling.nearest


@dataclass
class ChipBatch:
    """Pixels of a batch of chips.

    Attributes:
        chips: the chips, in batch order.
        pixels: (N, H, W, 3) uint8 RGB chips (invalid pixels are 0).
        valid_fraction: (N,) fraction of each chip's pixels that are valid;
            padding past the scene edge counts as invalid.
        keep: (N,) True for chips to classify (enough valid pixels).
        errors: per chip, the read error (``None`` when the read worked).
    """

    chips: list[Chip]
    pixels: np.ndarray
    valid_fraction: np.ndarray
    keep: np.ndarray
    errors: list[str | None]


class ChipReader:
    """Reads chips described by a :class:`ReadSpec` in the calling thread."""

    def __init__(self, spec: ReadSpec) -> None:
        self.spec = spec
        self._bands = sorted(set(spec.bands))
        self._channel_of = [self._bands.index(b) for b in spec.bands]

    def read(self, chip: Chip) -> tuple[np.ndarray, float]:
        """Read one chip.

        Returns:
            The (H, W, 3) uint8 chip and its valid-pixel fraction.
        """
        spec, grid = self.spec, self.spec.grid
        ds = thread_dataset(spec.path)
        out_h, out_w = grid.out_height, grid.out_width
        rgb = np.zeros((3, out_h, out_w), dtype=np.uint8)
        valid = np.zeros((out_h, out_w), dtype=bool)
        window = grid.footprint_window(chip)
        # Output pixels covered by the footprint; the rest of the chip is padding.
        read_w = min(out_w, round(window.width * out_w / chip.width))
        read_h = min(out_h, round(window.height * out_h / chip.height))
        if read_w > 0 and read_h > 0:
            shape = (read_h, read_w)
            data = ds.read(self._bands, window=window, out_shape=(len(self._bands), *shape), resampling=spec.resampling)
            inside = valid_mask(ds, data, self._bands, window, shape, spec.nodata)
            data = data[self._channel_of]
            scaled = spec.scale.apply(data) if spec.scale is not None else data.astype(np.uint8, copy=False)
            scaled[:, ~inside] = 0
            rgb[:, :read_h, :read_w] = scaled
            valid[:read_h, :read_w] = inside
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), float(valid.mean())

    def read_batch(self, chips: list[Chip]) -> ChipBatch:
        """Read a batch of chips and mark the ones to classify.

        A window GDAL cannot read (a corrupt block, a dropped connection) fails
        that chip only; the error is kept and the rest of the batch goes on.
        """
        out = np.zeros((len(chips), self.spec.grid.out_height, self.spec.grid.out_width, 3), dtype=np.uint8)
        fractions = np.zeros(len(chips), dtype=np.float32)
        errors: list[str | None] = [None] * len(chips)
        for i, chip in enumerate(chips):
            try:
                out[i], fractions[i] = self.read(chip)
            except RasterioError as exc:
                errors[i] = " ".join(str(exc).split())[:300] or type(exc).__name__
        keep = (fractions >= self.spec.min_valid) & (fractions > 0)
        return ChipBatch(chips, out, fractions, keep, errors)
