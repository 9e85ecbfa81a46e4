"""Opening scenes: any GDAL raster (GeoTIFF, COG, VRT, URLs), and band selection."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError

from geobimors.errors import InputError, warn
from geobimors.files import check_regular_file
from geobimors.raster.safety import check_archive, check_local_dataset, is_user_url, network_guard

_URL_RE = re.compile(r"^(https?|s3|gs|az|ftp)://", re.IGNORECASE)

# Keep GDAL's block cache bounded (GDAL's default is 5% of RAM): memory must stay
# flat as scenes grow. Chips are read row by row, so the cache only needs one row of
# blocks across the scene (31 MB for a 20,000 px wide RGB COG with 512 px blocks);
# 128 MB covers scenes up to ~80,000 px wide. Users can raise it with the variable.
os.environ.setdefault("GDAL_CACHEMAX", "128")


def is_remote(path: str) -> bool:
    """True for URLs and GDAL virtual file systems (``/vsicurl/``, ``/vsis3/``, ...)."""
    return bool(_URL_RE.match(path)) or path.startswith("/vsi")


def gdal_path(path: str | os.PathLike[str]) -> str:
    """Return the path GDAL should open: local paths absolute, URLs through /vsicurl/."""
    text = os.fspath(path)
    if text.lower().startswith(("http://", "https://", "ftp://")):
        return "/vsicurl/" + text
    if is_remote(text):
        return text
    return str(Path(text).expanduser().absolute())


@dataclass(frozen=True)
class SceneInfo:
    """What the pipeline needs to know about a scene, without its pixels.

    Attributes:
        path: the path GDAL opens (absolute, or a /vsi path for URLs).
        width: raster width in pixels.
        height: raster height in pixels.
        count: number of bands.
        dtype: data type of the first band (``uint8``, ``uint16``, ``float32``, ...).
        crs: coordinate reference system, or ``None`` when the scene has none.
        transform: pixel-to-CRS affine transform.
        nodata: nodata value of the first band, or ``None``.
        colorinterp: colour interpretation name of each band.
        overview_factors: decimation factors of the overviews of band 1.
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    colorinterp: tuple[str, ...]
    overview_factors: tuple[int, ...]

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Ground size of a pixel along x and y (in CRS units), rotation included."""
        t = self.transform
        return (float((t.a**2 + t.d**2) ** 0.5), float((t.b**2 + t.e**2) ** 0.5))

    @property
    def has_overviews(self) -> bool:
        """True when the scene has overviews (COGs do)."""
        return bool(self.overview_factors)

    @property
    def name(self) -> str:
        """Short name of the scene for messages."""
        return os.path.basename(self.path.rstrip("/")) or self.path


def open_scene(
    path: str | os.PathLike[str],
    allow_no_crs: bool = False,
    allow_network: bool = False,
    allow_no_geotransform: bool = False,
) -> SceneInfo:
    """Open a scene and describe it.

    A local scene is inspected before GDAL opens it (see
    :mod:`geobimors.raster.safety`): it may not make geobimors reach the network
    unless ``allow_network``, and a VRT's sources must open.

    Args:
        path: a local path, a URL (``https://``, ``/vsicurl/...``) or any GDAL
            dataset name (VRT, ...).
        allow_no_crs: accept a scene without a CRS (outputs are then in pixel
            coordinates, with a warning).
        allow_network: let a local file (a VRT, ...) read sources over the
            network. A URL given as ``path`` always may.
        allow_no_geotransform: accept a scene with a CRS but no geotransform
            (mapped in pixel coordinates, with a warning).

    Returns:
        The scene description.

    Raises:
        InputError: if the scene is missing, unreadable, not a raster, empty,
            complex-valued, names network sources from a local file, has georeferencing that
            cannot be right, or has no CRS (unless ``allow_no_crs``).
    """
    text = os.fspath(path)
    target = gdal_path(text)
    network_ok = allow_network or is_user_url(text)
    if not is_remote(target):
        local = Path(target)
        if not local.exists():
            raise InputError(f"scene not found: {text}; check the path")
        if local.is_dir():
            raise InputError(f"scene {text} is a directory; pass a raster file (GeoTIFF, COG, VRT)")
        if not os.access(local, os.R_OK):
            raise InputError(f"scene {text} is not readable; check its permissions")
        check_regular_file(local, "scene")  # GDAL would block forever on a FIFO
        check_local_dataset(target, allow_network=network_ok, scene=text)
    elif not network_ok:
        check_archive(target)  # /vsizip/local.zip/...: GDAL's guard still applies to what is inside
    try:
        with network_guard(network_ok), rasterio.open(target) as ds:
            if ds.width == 0 or ds.height == 0 or ds.count == 0:
                raise InputError(f"scene {text} is empty ({ds.width} x {ds.height} px, {ds.count} bands)")
            complex_types = sorted({t for t in ds.dtypes if t.startswith("complex")})
            if complex_types:
                # Complex samples (SAR single-look complex) are not imagery: numpy would keep their real part.
                raise InputError(
                    f"scene {text} has complex-valued bands ({', '.join(complex_types)}), such as SAR single-look"
                    " complex data, which the model cannot read; convert them to amplitude first (gdal_calc.py -A"
                    f" {text} --allBands=A --calc='abs(A)' --type=Float32 --outfile=amplitude.tif)"
                )
            crs, transform = _georeferencing(ds, text, allow_no_crs, allow_no_geotransform)
            dropped_crs = crs is None and ds.crs is not None  # --allow-no-geotransform: pixel coordinates
            info = SceneInfo(
                path=target,
                width=ds.width,
                height=ds.height,
                count=ds.count,
                dtype=ds.dtypes[0],
                crs=crs,
                transform=transform,
                nodata=ds.nodata,
                colorinterp=tuple(ci.name for ci in ds.colorinterp),
                overview_factors=tuple(ds.overviews(1)),
            )
    except RasterioIOError as exc:
        if is_remote(target):
            raise InputError(
                f"could not open {text}: {_first_line(exc)}; check the URL and the network, "
                "or download the file and pass its local path"
            ) from None
        raise InputError(f"{text} is not a raster GDAL can read ({_first_line(exc)})") from None
    if info.crs is None and not dropped_crs:
        if not allow_no_crs:
            raise InputError(
                f"scene {text} has no CRS, so chips cannot be georeferenced; assign one "
                "(gdal_edit.py -a_srs EPSG:XXXX) or pass --allow-no-crs to map in pixel coordinates"
            )
        warn(f"scene {info.name} has no CRS: outputs are in pixel coordinates")
    return info


def _georeferencing(
    ds: rasterio.io.DatasetReader, text: str, allow_no_crs: bool, allow_no_geotransform: bool
) -> tuple[CRS | None, Affine]:
    """The scene's CRS and transform, refusing georeferencing that cannot be right.

    Rotated and sheared geotransforms are accepted (chip footprints are the exact
    rotated windows). GCP-only and RPC-only rasters are refused: warping them
    is a choice of resampling and target grid the user should make (gdalwarp).
    """
    crs, transform = ds.crs, ds.transform
    gcps, _ = ds.gcps
    if crs is None and not allow_no_crs:
        if gcps:
            raise InputError(
                f"scene {text} is georeferenced by {len(gcps)} ground control points only; warp it to a grid "
                f"first: gdalwarp -t_srs EPSG:XXXX {text} warped.tif (or -of VRT warped.vrt), or pass "
                "--allow-no-crs to map in pixel coordinates"
            )
        if ds.rpcs is not None:
            raise InputError(
                f"scene {text} is georeferenced by RPCs only; orthorectify it first: gdalwarp -rpc -t_srs "
                f"EPSG:XXXX {text} warped.tif, or pass --allow-no-crs to map in pixel coordinates"
            )
    values = [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]
    if not all(math.isfinite(v) for v in values) or transform.determinant == 0:
        raise InputError(
            f"scene {text} has a degenerate geotransform {tuple(values)} (zero or infinite pixel size); "
            "fix it (gdal_edit.py -a_ullr ULX ULY LRX LRY)"
        )
    if crs is not None and transform.is_identity:
        if not allow_no_geotransform:
            raise InputError(
                f"scene {text} has a CRS ({crs.to_string()}) but no geotransform, so its pixels have no place "
                "on the ground; add one (gdal_edit.py -a_ullr ULX ULY LRX LRY) or pass --allow-no-geotransform "
                "to map in pixel coordinates"
            )
        warn(f"scene {os.path.basename(text)} has no geotransform: outputs are in pixel coordinates, without its CRS")
        return None, transform
    if crs is not None and crs.is_geographic:
        xs, ys = zip(*(transform * corner for corner in ((0, 0), (ds.width, 0), (ds.width, ds.height), (0, ds.height))))
        if min(ys) < -90 or max(ys) > 90 or min(xs) < -360 or max(xs) > 360:
            raise InputError(
                f"scene {text} is in a geographic CRS but spans longitudes {min(xs):.6g} to {max(xs):.6g} and "
                f"latitudes {min(ys):.6g} to {max(ys):.6g} (beyond +-360 / +-90 degrees); its CRS or geotransform "
                "is wrong: fix them (gdal_edit.py -a_srs / -a_ullr)"
            )
    return crs, transform


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class BandSelection:
    """Which scene bands become the R, G and B channels of a chip.

    Attributes:
        indexes: three 1-based band indexes (the same band thrice for grey).
        description: how the choice was made, for summaries.
    """

    indexes: tuple[int, int, int]
    description: str


def select_bands(info: SceneInfo, bands: Sequence[int] | None = None) -> BandSelection:
    """Choose the bands that make the RGB chips.

    Without ``bands``: the bands whose colour interpretation is red, green and
    blue; else bands 1, 2, 3 of a 3-band scene; else band 1 of a single-band
    scene as grey (with a warning). Other band counts need ``--bands``, because
    guessing would silently feed the model false colours.

    Args:
        info: the scene.
        bands: 1-based band indexes: three for RGB, or one for grey.

    Returns:
        The band selection.

    Raises:
        InputError: if an index is out of range, the count is not 1 or 3, or
            the scene's bands cannot be chosen without ``bands``.
    """
    if bands is not None:
        bands = [int(b) for b in bands]
        bad = [b for b in bands if b < 1 or b > info.count]
        if bad:
            raise InputError(
                f"--bands {','.join(map(str, bands))}: band {bad[0]} is out of range; "
                f"scene {info.name} has bands 1 to {info.count}"
            )
        if len(bands) == 3:
            r, g, b = bands
            return BandSelection((r, g, b), f"bands {r},{g},{b} as RGB")
        if len(bands) == 1:
            warn(f"one band selected ({bands[0]}): chips are grey RGB, which CLIP models see as greyscale photos")
            return BandSelection((bands[0],) * 3, f"band {bands[0]} as grey")
        raise InputError(f"--bands takes 3 band indexes (R,G,B) or 1 (grey), got {len(bands)}")

    interp = [c.lower() for c in info.colorinterp]
    wanted = [ColorInterp.red.name, ColorInterp.green.name, ColorInterp.blue.name]
    if all(name in interp for name in wanted):
        r, g, b = (interp.index(name) + 1 for name in wanted)
        return BandSelection((r, g, b), f"bands {r},{g},{b} (red, green, blue colour interpretation)")
    if info.count == 3:
        return BandSelection((1, 2, 3), "bands 1,2,3 as RGB")
    if info.count == 1:
        warn(f"scene {info.name} has a single band: chips are grey RGB; pass --bands to change")
        return BandSelection((1, 1, 1), "band 1 as grey")
    raise InputError(
        f"scene {info.name} has {info.count} bands and no red/green/blue colour interpretation; "
        "pass --bands R,G,B (1-based), e.g. --bands 3,2,1 for Landsat 7 bands 1-6"
    )
