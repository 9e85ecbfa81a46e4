"""The chip grid: how a scene is cut into georeferenced chips.

Chips start at multiples of the stride from the scene's top-left pixel. The
last row and column of chips may reach past the scene's right and bottom
edges; those pixels are read as nodata (padding), so every chip has the same
shape and ground size and no pixel is classified twice with zero overlap.
A chip's *footprint* is the part of its window inside the scene, so the
footprints of a zero-overlap grid tile the scene exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geobimors.errors import InputError, warn
from geobimors.raster.scene import SceneInfo
from geobimors.units import Length, parse_length


@dataclass(frozen=True)
class GridSpec:
    """How to cut chips, as the user gives it.

    Attributes:
        chip_size: chip edge, in pixels or ground units. In pixels with ``gsd``
            set, it counts output (resampled) pixels.
        overlap: overlap between neighbouring chips, in the units of
            ``chip_size``; must be smaller than the chip.
        gsd: ground sample distance of the chips in metres per pixel; chips
            are resampled to it. ``None`` keeps the scene's resolution.
    """

    chip_size: Length = field(default_factory=lambda: Length(224, "px"))
    overlap: Length = field(default_factory=lambda: Length(0, "px"))
    gsd: float | None = None

    @classmethod
    def parse(cls, chip_size: str | int = 224, overlap: str | int = 0, gsd: float | str | None = None) -> GridSpec:
        """Build a spec from option values such as ``"640m"``, ``"32"`` and ``10``."""
        size = parse_length(chip_size, "--chip-size")
        if size.value <= 0:
            raise InputError(f"--chip-size must be positive, got {chip_size!r}")
        gsd_m: float | None = None
        if gsd is not None:
            gsd_len = parse_length(f"{gsd}m" if isinstance(gsd, (int, float)) else gsd, "--gsd")
            if gsd_len.unit == "px":
                gsd_len = Length(gsd_len.value, "m")  # a bare --gsd number means metres per pixel
            if gsd_len.value <= 0:
                raise InputError(f"--gsd must be positive (metres per pixel), got {gsd!r}")
            gsd_m = gsd_len.value
        return cls(size, parse_length(overlap, "--overlap"), gsd_m)


@dataclass(frozen=True)
class Chip:
    """One chip of a grid: its grid position and its pixel window in the scene.

    The window may reach past the scene's right/bottom edge (see module docs).

    Attributes:
        row: grid row (0 at the top).
        col: grid column (0 at the left).
        row_off: first scene row of the window.
        col_off: first scene column of the window.
        height: window height in scene pixels.
        width: window width in scene pixels.
    """

    row: int
    col: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        """The full chip window (may extend past the scene)."""
        return Window(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class ChipGrid:
    """A regular grid of chips over a scene, in scene pixels.

    Attributes:
        width: scene width in pixels.
        height: scene height in pixels.
        transform: scene pixel-to-CRS transform.
        crs: scene CRS (``None`` for pixel coordinates).
        chip_width: chip window width in scene pixels.
        chip_height: chip window height in scene pixels.
        stride_x: column step between chips in scene pixels.
        stride_y: row step between chips in scene pixels.
        out_width: chip width after resampling (what the model sees before its own resize).
        out_height: chip height after resampling.
    """

    width: int
    height: int
    transform: Affine
    crs: CRS | None
    chip_width: int
    chip_height: int
    stride_x: int
    stride_y: int
    out_width: int
    out_height: int

    def __post_init__(self) -> None:
        for name in ("chip_width", "chip_height", "stride_x", "stride_y", "out_width", "out_height"):
            if getattr(self, name) < 1:
                raise InputError(f"chip grid {name.replace('_', ' ')} must be at least 1 pixel")
        if self.stride_x > self.chip_width or self.stride_y > self.chip_height:
            raise InputError("chip stride must not exceed the chip size (gaps between chips)")

    @property
    def n_cols(self) -> int:
        """Number of chip columns."""
        return _count(self.width, self.chip_width, self.stride_x)

    @property
    def n_rows(self) -> int:
        """Number of chip rows."""
        return _count(self.height, self.chip_height, self.stride_y)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def chip(self, row: int, col: int) -> Chip:
        """The chip at grid position (row, col)."""
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"chip ({row}, {col}) outside a {self.n_rows} x {self.n_cols} grid")
        return Chip(row, col, row * self.stride_y, col * self.stride_x, self.chip_height, self.chip_width)

    def chips(self, start: int = 0, stop: int | None = None) -> Iterator[Chip]:
        """Chips in row-major order (top row first), optionally a range of linear indexes."""
        n_cols = self.n_cols
        stop = len(self) if stop is None else min(stop, len(self))
        for index in range(start, stop):
            yield self.chip(index // n_cols, index % n_cols)

    def footprint_window(self, chip: Chip) -> Window:
        """The part of the chip's window inside the scene."""
        width = min(chip.width, self.width - chip.col_off)
        height = min(chip.height, self.height - chip.row_off)
        return Window(chip.col_off, chip.row_off, width, height)

    def footprint_windows(self, chips: list[Chip]) -> np.ndarray:
        """Footprint windows of many chips as an (N, 4) array of col_off, row_off, width, height."""
        arr = np.array([(c.col_off, c.row_off, c.width, c.height) for c in chips], dtype=np.int64).reshape(-1, 4)
        arr[:, 2] = np.minimum(arr[:, 2], self.width - arr[:, 0])
        arr[:, 3] = np.minimum(arr[:, 3], self.height - arr[:, 1])
        return arr

    def window_transform(self, window: Window) -> Affine:
        """Transform of a window of this grid's scene."""
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    @property
    def ground_size(self) -> tuple[float, float]:
        """Chip size on the ground, in CRS units along x and y."""
        t = self.transform
        return (self.chip_width * math.hypot(t.a, t.d), self.chip_height * math.hypot(t.b, t.e))

    def describe(self) -> str:
        """One line for summaries."""
        text = (
            f"{self.n_rows} x {self.n_cols} chips of {self.chip_width} x {self.chip_height} px, "
            f"stride {self.stride_x} x {self.stride_y} px"
        )
        if (self.out_width, self.out_height) != (self.chip_width, self.chip_height):
            text += f", resampled to {self.out_width} x {self.out_height} px"
        return text


def _count(size: int, chip: int, stride: int) -> int:
    """Chips along one axis: enough to reach the last pixel, each starting inside the scene."""
    if size <= chip:
        return 1
    return math.ceil((size - chip) / stride) + 1


def window_corners(transform: Affine, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CRS coordinates of window corners.

    Args:
        transform: pixel-to-CRS transform.
        windows: (N, 4) array of col_off, row_off, width, height.

    Returns:
        Two (N, 4) arrays of x and y: top-left, top-right, bottom-right, bottom-left.
    """
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    c0, r0 = windows[:, 0], windows[:, 1]
    c1, r1 = c0 + windows[:, 2], r0 + windows[:, 3]
    cols = np.stack([c0, c1, c1, c0], axis=1)
    rows = np.stack([r0, r0, r1, r1], axis=1)
    t = transform
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def metres_per_unit(info: SceneInfo, quiet: bool = False) -> tuple[float, float]:
    """Metres per CRS unit along x and y at the scene (approximate for geographic CRSs).

    Args:
        info: the scene.
        quiet: do not warn that a geographic CRS's units are converted at the scene centre.

    Raises:
        InputError: if the scene has no CRS.
    """
    crs = info.crs
    if crs is None:
        raise InputError(
            f"scene {info.name} has no CRS, so ground units cannot be converted; give --chip-size, "
            "--overlap and --gsd in pixels"
        )
    if crs.is_geographic:
        col, row = info.width / 2, info.height / 2
        lon, lat = (float(v) for v in info.transform @ (col, row))
        per_x, per_y = metres_per_degree(crs, lon, lat)
        if per_x < 1000.0:  # within ~0.5 degrees of a pole, a degree of longitude is almost no ground
            raise InputError(
                f"scene {info.name} is centred at latitude {lat:.4f}, too close to a pole to convert ground units "
                "to degrees; give --chip-size, --overlap and --gsd in pixels, or reproject the scene to a polar "
                "projection (gdalwarp -t_srs EPSG:3413 or EPSG:3031)"
            )
        if not quiet:
            warn(
                f"scene {info.name} is in a geographic CRS: ground units are converted to degrees "
                f"at the scene centre (latitude {lat:.2f}); chips are not square on the ground away from it"
            )
        return per_x, per_y
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return float(factor), float(factor)


def metres_per_degree(crs: CRS, lon: float, lat: float) -> tuple[float, float]:
    """Geodesic metres per degree of longitude and of latitude at (lon, lat), on the CRS's ellipsoid.

    Measured with :class:`pyproj.Geod` over one degree centred on the point (kept
    inside +-90 degrees of latitude), not with a fixed metres-per-degree figure.
    """
    from pyproj import CRS as ProjCRS

    try:
        geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod()
    except Exception:  # a CRS pyproj cannot read: WGS 84's ellipsoid is within 0.5% of any Earth ellipsoid
        geod = None
    if geod is None:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
    _, _, along_x = geod.inv(lon - 0.5, lat, lon + 0.5, lat)
    south, north = max(-90.0, lat - 0.5), min(90.0, lat + 0.5)
    _, _, along_y = geod.inv(lon, south, lon, north)
    return float(along_x), float(along_y / (north - south))


def build_grid(info: SceneInfo, spec: GridSpec) -> ChipGrid:
    """Resolve a grid spec against a scene.

    Args:
        info: the scene.
        spec: chip size, overlap and target GSD.

    Returns:
        The chip grid in scene pixels.

    Raises:
        InputError: if sizes cannot be converted, the overlap is not smaller
            than the chip, or the chip is larger than the scene.
    """
    needs_metres = spec.chip_size.is_ground or spec.overlap.is_ground or spec.gsd is not None
    px_x, px_y = info.pixel_size
    if needs_metres:
        mx, my = metres_per_unit(info)
        res_x, res_y = px_x * mx, px_y * my  # metres per scene pixel
    # Ground size of the chip edge along each axis (metres), or None when all in pixels.
    if spec.chip_size.is_ground:
        ground_x = ground_y = spec.chip_size.value
        if spec.gsd is not None:
            out_w = out_h = max(1, round(spec.chip_size.value / spec.gsd))
        else:
            out_w, out_h = max(1, round(ground_x / res_x)), max(1, round(ground_y / res_y))
        chip_w, chip_h = max(1, round(ground_x / res_x)), max(1, round(ground_y / res_y))
    elif spec.gsd is not None:
        out_w = out_h = int(spec.chip_size.value)
        ground_x = ground_y = spec.chip_size.value * spec.gsd
        chip_w, chip_h = max(1, round(ground_x / res_x)), max(1, round(ground_y / res_y))
    else:
        chip_w = chip_h = out_w = out_h = int(spec.chip_size.value)

    if spec.overlap.is_ground:
        over_x, over_y = round(spec.overlap.value / res_x), round(spec.overlap.value / res_y)
    else:
        # Pixel overlap counts pixels of the chip as given (output pixels when resampling).
        over_x = round(spec.overlap.value * chip_w / out_w)
        over_y = round(spec.overlap.value * chip_h / out_h)
    if over_x >= chip_w or over_y >= chip_h:
        raise InputError(
            f"--overlap {spec.overlap} must be smaller than the chip ({spec.chip_size}); "
            "use e.g. a quarter of the chip size"
        )
    if chip_w > info.width or chip_h > info.height:
        raise InputError(_chip_too_large(info, spec, chip_w, chip_h))
    return ChipGrid(
        width=info.width,
        height=info.height,
        transform=info.transform,
        crs=info.crs,
        chip_width=chip_w,
        chip_height=chip_h,
        stride_x=chip_w - over_x,
        stride_y=chip_h - over_y,
        out_width=out_w,
        out_height=out_h,
    )


def _chip_too_large(info: SceneInfo, spec: GridSpec, chip_w: int, chip_h: int) -> str:
    """Say what was resampled to what, and the ways out, when a chip does not fit in the scene."""
    scene = f"scene {info.name} ({info.width} x {info.height} px)"
    if spec.gsd is None:
        return f"chip size {spec.chip_size} ({chip_w} x {chip_h} px) is larger than {scene}; pass a smaller --chip-size"
    ground = spec.chip_size.value if spec.chip_size.is_ground else spec.chip_size.value * spec.gsd
    return (
        f"chip size {spec.chip_size} at {spec.gsd:g} m/px covers {ground:g} m, {chip_w} x {chip_h} px of the "
        f"{ground / chip_w:.2g} m/px {scene}: larger than the scene. Chips are resampled to {spec.gsd:g} m/px "
        "(chosen for the model unless --gsd is given); pass --gsd scene to keep the scene's resolution, "
        "a smaller --chip-size, or a model made for aerial imagery (e.g. --model ViT-B-16:openai)"
    )
