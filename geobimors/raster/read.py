"""Windowed reads of chips: bands, nodata masks, padding, resampling, 8-bit scaling.

Reads never load a whole scene. Chips that are resampled are read one window
each (GDAL uses overviews when a chip is downsampled); chips kept at the scene's
resolution are read a grid row of a batch at a time, one window for the strip,
then cut, because per-chip reads cost more CPU than the bundled model's forward
pass on a GPU. Every thread keeps its own open dataset, because GDAL dataset
handles must not be shared between threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geobimors.errors import RunError
from geobimors.raster.grid import Chip, ChipGrid
from geobimors.raster.safety import network_guard
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
        allow_network: GDAL may use the network while reading (the scene is a
            URL, or the user allowed a local file's network sources).
    """

    path: str
    grid: ChipGrid
    bands: tuple[int, int, int]
    scale: ScaleRange | None
    nodata: float | None = None
    min_valid: float = 0.5
    allow_network: bool = False

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
        grid = self.spec.grid
        rgb = np.zeros((3, grid.out_height, grid.out_width), dtype=np.uint8)
        valid = np.zeros((grid.out_height, grid.out_width), dtype=bool)
        window = grid.footprint_window(chip)
        # Output pixels covered by the footprint; the rest of the chip is padding.
        read_w = min(grid.out_width, round(window.width * grid.out_width / chip.width))
        read_h = min(grid.out_height, round(window.height * grid.out_height / chip.height))
        if read_w > 0 and read_h > 0:
            rgb[:, :read_h, :read_w], valid[:read_h, :read_w] = self._rgb(*self._fetch(window, (read_h, read_w)))
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), float(valid.mean())

    def _rgb(self, data: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (3, H, W) uint8 RGB of values read (invalid pixels 0), and the valid mask."""
        data = data[self._channel_of]
        scaled = self.spec.scale.apply(data) if self.spec.scale is not None else data.astype(np.uint8, copy=False)
        scaled[:, ~inside] = 0
        return scaled, inside

    def _fetch(self, window: Window, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Values (bands, H, W) of a window resampled to ``shape``, and its valid mask (H, W)."""
        with network_guard(self.spec.allow_network):  # VRT sources open lazily, at reads
            ds = thread_dataset(self.spec.path)
            data = ds.read(
                self._bands, window=window, out_shape=(len(self._bands), *shape), resampling=self.spec.resampling
            )
            return data, valid_mask(ds, data, self._bands, window, shape, self.spec.nodata)

    def read_batch(self, chips: list[Chip]) -> ChipBatch:
        """Read a batch of chips and mark the ones to classify.

        A window GDAL cannot read (a corrupt block, a dropped connection) fails
        that chip only; the error is kept and the rest of the batch goes on.
        """
        out = np.zeros((len(chips), self.spec.grid.out_height, self.spec.grid.out_width, 3), dtype=np.uint8)
        fractions = np.zeros(len(chips), dtype=np.float32)
        errors: list[str | None] = [None] * len(chips)
        with network_guard(self.spec.allow_network):  # once per batch: each chip read then skips it
            for strip in self._strips(chips):
                if len(strip) > 1 and self._read_strip(chips, strip, out, fractions):
                    continue
                for i in strip:  # one window per chip; a strip that failed is retried chip by chip
                    try:
                        out[i], fractions[i] = self.read(chips[i])
                    except RasterioError as exc:
                        errors[i] = read_error_text(exc)
        keep = (fractions >= self.spec.min_valid) & (fractions > 0)
        return ChipBatch(chips, out, fractions, keep, errors)

    def _strips(self, chips: list[Chip]) -> list[list[int]]:
        """Indexes of the batch's chips grouped into strips read as one window each.

        A strip is a run of chips of one grid row, next to or overlapping each other, kept at
        the scene's resolution (a resampled chip is its own strip: resampling a strip would
        blend neighbouring chips' pixels at their edges).
        """
        grid = self.spec.grid
        if (grid.out_width, grid.out_height) != (grid.chip_width, grid.chip_height):
            return [[i] for i in range(len(chips))]
        strips: list[list[int]] = []
        for i, chip in enumerate(chips):
            if strips:
                last = chips[strips[-1][-1]]
                if chip.row_off == last.row_off and last.col_off < chip.col_off <= last.col_off + last.width:
                    strips[-1].append(i)
                    continue
            strips.append([i])
        return strips

    def _read_strip(self, chips: list[Chip], strip: list[int], out: np.ndarray, fractions: np.ndarray) -> bool:
        """Read a strip of chips as one window into ``out``; ``False`` if GDAL could not read it."""
        grid = self.spec.grid
        first, last = chips[strip[0]], chips[strip[-1]]
        window = grid.footprint_window(Chip(first.row, first.col, first.row_off, first.col_off, first.height,
                                            last.col_off + last.width - first.col_off))  # fmt: skip
        if window.width <= 0 or window.height <= 0:
            return False  # wholly past the scene's edge: the per-chip path pads it
        try:
            rgb, valid = self._rgb(*self._fetch(window, (window.height, window.width)))
        except RasterioError:
            return False
        size = grid.out_height * grid.out_width
        for i in strip:
            start = chips[i].col_off - first.col_off
            width = max(0, min(grid.out_width, window.width - start))
            out[i, : window.height, :width] = rgb[:, :, start : start + width].transpose(1, 2, 0)
            fractions[i] = valid[:, start : start + width].sum() / size
        return True


class ArrayChipReader(ChipReader):
    """Reads chips from values already in memory (a block of rows of a DataArray).

    Same padding, masking and scaling as :class:`ChipReader`; resampling to the
    chip's output size uses area averaging (shrinking) or bilinear
    interpolation (enlarging) in torch, which can differ slightly from GDAL's.

    Args:
        spec: how to read (its ``path`` is not used).
        values: (bands, rows, cols) values of all scene bands for scene rows
            ``row_offset`` onwards.
        row_offset: scene row of the first row of ``values``.
    """

    def __init__(self, spec: ReadSpec, values: np.ndarray, row_offset: int = 0) -> None:
        super().__init__(spec)
        self.values = values
        self.row_offset = row_offset

    def _fetch(self, window: Window, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(window.row_off - self.row_offset, window.row_off - self.row_offset + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        data = np.asarray(self.values[[b - 1 for b in self._bands], rows, cols])
        if self.spec.nodata is not None:
            inside = np.all(data != self.spec.nodata, axis=0)
        else:
            inside = np.ones(data.shape[1:], dtype=bool)
        if np.issubdtype(data.dtype, np.floating):
            inside &= np.all(np.isfinite(data), axis=0)
        if tuple(data.shape[1:]) != shape:
            data, inside = _resize(data, inside, shape)
        return data, inside


def _resize(data: np.ndarray, valid: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    values = torch.from_numpy(np.nan_to_num(data.astype(np.float32)))[None]
    shrinking = shape[0] < data.shape[1] or shape[1] < data.shape[2]
    resized = F.interpolate(values, size=shape, mode="area" if shrinking else "bilinear", align_corners=None)
    mask = F.interpolate(torch.from_numpy(valid.astype(np.float32))[None, None], size=shape, mode="nearest")
    out = resized[0].numpy()
    if np.issubdtype(data.dtype, np.integer):
        out = np.rint(out).astype(data.dtype)
    return out, mask[0, 0].numpy() > 0.5


def read_error_text(exc: BaseException) -> str:
    """One line (at most 300 characters) saying why a read failed.

    rasterio's "Read failed. See previous exception for details." carries GDAL's reason in the
    exception it was raised from: that reason is what the user needs, so it is appended.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    reason = " ".join(str(cause).split()) if cause is not None else ""
    if reason and reason not in text:
        text = f"{text.removesuffix(' See previous exception for details.')} {reason}"
    return text[:300]


def unreadable_scene_error(scene: str, first_failure: str | None) -> RunError:
    """The error of a run none of whose chips could be read (map and embed raise it, leaving no output)."""
    return RunError(
        f"no chip of {scene} could be read (first at {first_failure}); check the file (gdalinfo -checksum) or "
        "the connection and run again"
    )
