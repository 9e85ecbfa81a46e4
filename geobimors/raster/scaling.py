"""Scene-level scaling of 16-bit and float imagery to 8 bits.

CLIP models see 8-bit photos. Scaling each chip by its own min/max would map
the same reflectance to different values in different chips (a dark forest chip
would look like a bright one), so geobimors computes one range per band for the
whole scene, once, from the overviews (COGs) or from a spread sample of windows,
and applies it to every chip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from geobimors.errors import InputError, warn
from geobimors.raster.scene import SceneInfo

# Longest side of the decimated read used for statistics.
STATS_READ_SIZE = 1024
# Scenes without overviews above this many pixels are sampled by windows instead
# of a decimated read (a decimated read without overviews reads every block).
STATS_FULL_READ_MAX_PIXELS = 4096 * 4096
STATS_SAMPLE_GRID = 8
STATS_SAMPLE_WINDOW = 256


@dataclass(frozen=True)
class ScaleRange:
    """Per-band value range mapped to 0..255 (values outside are clipped).

    Attributes:
        low: value mapped to 0, per selected band (R, G, B order).
        high: value mapped to 255, per selected band.
        source: how the range was obtained, for summaries.
    """

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    source: str

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Scale a (3, H, W) array to uint8 with this range."""
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        span = np.asarray(self.high, dtype=np.float32)[:, None, None] - low
        span[span <= 0] = 1.0
        scaled = (data.astype(np.float32, copy=False) - low) * (255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def describe(self) -> str:
        """One line for summaries."""
        pairs = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(self.low, self.high))
        return f"{pairs} ({self.source})"


def parse_scale_range(text: str | Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Parse ``MIN,MAX`` (all bands) or ``RMIN,RMAX,GMIN,GMAX,BMIN,BMAX``."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise InputError(
            f"--scale-range {text!r}: expected numbers MIN,MAX or six numbers, one pair per band"
        ) from None
    if len(values) == 2:
        values = values * 3
    if len(values) != 6 or not all(np.isfinite(values)):
        raise InputError(f"--scale-range {text!r}: expected MIN,MAX or RMIN,RMAX,GMIN,GMAX,BMIN,BMAX")
    low, high = tuple(values[0::2]), tuple(values[1::2])
    if any(h <= lo for lo, h in zip(low, high)):
        raise InputError(f"--scale-range {text!r}: each MAX must be greater than its MIN")
    return low, high


def needs_scaling(dtype: str) -> bool:
    """True for data types that are not already 8-bit."""
    return np.dtype(dtype) != np.uint8


def scene_scale_range(
    info: SceneInfo,
    bands: tuple[int, int, int],
    percentiles: tuple[float, float] = (2.0, 98.0),
    manual: str | Sequence[float] | None = None,
    nodata: float | None = None,
) -> ScaleRange | None:
    """Work out the scene-level range used to scale chips to 8 bits.

    Args:
        info: the scene.
        bands: the selected band indexes (R, G, B).
        percentiles: low and high percentiles of valid pixels (used when
            ``manual`` is not given).
        manual: a range given by hand (see :func:`parse_scale_range`).
        nodata: nodata value overriding the scene's.

    Returns:
        The range, or ``None`` for 8-bit scenes without a manual range (their
        pixels pass through unchanged).
    """
    if manual is not None:
        low, high = parse_scale_range(manual)
        return ScaleRange(low, high, "given with --scale-range")  # type: ignore[arg-type]
    if not needs_scaling(info.dtype):
        return None
    check_percentiles(percentiles)
    samples, source = _sample_pixels(info, sorted(set(bands)), nodata)
    return percentile_range(samples, bands, percentiles, source, info.name)


def check_percentiles(percentiles: tuple[float, float]) -> None:
    """Raise :class:`InputError` unless ``0 <= LOW < HIGH <= 100``."""
    lo_p, hi_p = percentiles
    if not (0 <= lo_p < hi_p <= 100):
        raise InputError(f"--percentiles {lo_p},{hi_p}: need 0 <= LOW < HIGH <= 100")


def percentile_range(
    samples: Mapping[int, np.ndarray],
    bands: tuple[int, int, int],
    percentiles: tuple[float, float],
    source: str,
    scene_name: str,
) -> ScaleRange:
    """The range between two percentiles of each band's valid sample values.

    Args:
        samples: valid pixel values per band index (every band of ``bands``).
        bands: the selected band indexes (R, G, B).
        percentiles: the low and high percentiles mapped to 0 and 255.
        source: what was sampled, for summaries (``overviews``, ``64 sampled windows``...).
        scene_name: the scene, for the warning about a band without valid pixels.
    """
    lo_p, hi_p = percentiles
    per_band: dict[int, tuple[float, float]] = {}
    for band in sorted(set(bands)):
        values = samples[band]
        if values.size == 0:
            warn(f"scene {scene_name} band {band}: no valid pixels in the statistics sample; using 0..1")
            per_band[band] = (0.0, 1.0)
            continue
        lo, hi = np.percentile(values, [lo_p, hi_p])
        if hi <= lo:
            hi = lo + 1.0
        per_band[band] = (float(lo), float(hi))
    low = tuple(per_band[b][0] for b in bands)
    high = tuple(per_band[b][1] for b in bands)
    return ScaleRange(low, high, f"percentiles {lo_p:g}-{hi_p:g} of {source}")  # type: ignore[arg-type]


def _sample_pixels(info: SceneInfo, bands: list[int], nodata: float | None) -> tuple[dict[int, np.ndarray], str]:
    """Valid pixel values per band from overviews, a decimated read or sampled windows."""
    with rasterio.open(info.path) as ds:
        if info.has_overviews or info.width * info.height <= STATS_FULL_READ_MAX_PIXELS:
            scale = max(info.width, info.height) / STATS_READ_SIZE
            shape = (max(1, round(info.height / max(scale, 1))), max(1, round(info.width / max(scale, 1))))
            window = Window(0, 0, info.width, info.height)
            windows = [(window, shape)]
            source = "overviews" if info.has_overviews else "the whole scene"
        else:
            n = STATS_SAMPLE_GRID
            size_x = min(STATS_SAMPLE_WINDOW, info.width)
            size_y = min(STATS_SAMPLE_WINDOW, info.height)
            xs = np.linspace(0, info.width - size_x, n).round().astype(int)
            ys = np.linspace(0, info.height - size_y, n).round().astype(int)
            windows = [(Window(int(x), int(y), size_x, size_y), (size_y, size_x)) for y in ys for x in xs]
            source = f"{len(windows)} sampled windows"
        collected: dict[int, list[np.ndarray]] = {b: [] for b in bands}
        for window, shape in windows:
            data = ds.read(bands, window=window, out_shape=(len(bands), *shape), resampling=Resampling.nearest)
            valid = valid_mask(ds, data, bands, window, shape, nodata)
            for i, band in enumerate(bands):
                collected[band].append(data[i][valid])
    return {b: np.concatenate(v).astype(np.float64) for b, v in collected.items()}, source


def valid_mask(
    ds: rasterio.io.DatasetReader,
    data: np.ndarray,
    bands: list[int],
    window: Window,
    shape: tuple[int, int],
    nodata: float | None,
) -> np.ndarray:
    """Pixels valid in every band: not nodata/masked/transparent, and finite.

    Args:
        ds: the open dataset.
        data: the (bands, H, W) values already read for ``window``.
        bands: the band indexes of ``data``.
        window: the window read.
        shape: the (H, W) output shape of the read.
        nodata: nodata value overriding the dataset's masks.
    """
    if nodata is not None:
        valid = np.all(data != nodata, axis=0)
    elif all(ds.mask_flag_enums[b - 1] == [rasterio.enums.MaskFlags.all_valid] for b in bands):
        valid = np.ones(shape, dtype=bool)
    else:
        masks = ds.read_masks(bands, window=window, out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        valid = np.all(masks > 0, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid
