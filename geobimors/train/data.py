"""Labelled images for training and evaluation: ImageFolder trees and polygons over a raster.

Class folders become labels with readable names (``denseresidential`` -> ``dense
residential area``, see :mod:`geobimors.class_names`; unknown folders are split into
words: ``SnowField`` -> ``snow field``), or through a labels file with ``FolderName:
prompt text`` lines (the text names the class in reports and maps). Polygons and
points over a raster are read as chips exactly as ``geobimors map`` reads them (same
grid, bands, scaling and resampling).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geobimors.class_names import readable_class_name
from geobimors.errors import InputError, warn
from geobimors.labels import Label, parse_labels
from geobimors.raster.images import IMAGE_SUFFIXES, ImageFiles, Images

DEFAULT_MIN_PURITY = 0.75
if TYPE_CHECKING:
    from affine import Affine

    from geobimors.raster.grid import Chip, ChipGrid


@dataclass
class LabelledImages:
    """Images with class targets.

    Attributes:
        images: (N, H, W, 3) uint8 RGB images (all the same size): in memory, or image files read
            on demand (:class:`~geobimors.raster.images.ImageFiles`, what image folders give).
        targets: (N,) class index of each image.
        labels: the classes, in target order.
        sources: where each image came from (file path or polygon id).
    """

    images: Images
    targets: np.ndarray
    labels: list[Label]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: np.ndarray) -> LabelledImages:
        """The images at ``index`` (indexes or a boolean mask), with their classes; files stay unread."""
        index = np.arange(len(self))[index]
        images = self.images.take(index) if isinstance(self.images, ImageFiles) else self.images[index]
        return LabelledImages(images, self.targets[index], self.labels, [self.sources[i] for i in index.tolist()])

    def in_memory(self) -> LabelledImages:
        """The same images with their pixels read (for training, which visits every image each epoch)."""
        if isinstance(self.images, ImageFiles):
            return LabelledImages(np.asarray(self.images), self.targets, self.labels, self.sources)
        return self

    def subset(self, classes: Sequence[int]) -> LabelledImages:
        """Images of some classes only, re-indexed to those classes."""
        classes = list(classes)
        kept = self.take(np.isin(self.targets, classes))
        remap = {old: new for new, old in enumerate(classes)}
        kept.targets = np.array([remap[int(t)] for t in kept.targets], dtype=np.int64)
        kept.labels = [self.labels[c] for c in classes]
        return kept


def split_base_new(n_classes: int) -> tuple[list[int], list[int]]:
    """Base-to-new protocol: the first half of the sorted classes is base, the rest new."""
    half = (n_classes + 1) // 2
    return list(range(half)), list(range(half, n_classes))


def folder_labels(root: Path, labels_file: str | os.PathLike[str] | None = None) -> tuple[list[str], list[Label]]:
    """Class folders of an ImageFolder tree (sorted) and their labels.

    Raises:
        InputError: if the folder has fewer than two class folders, or the labels
            file does not name every folder.
    """
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise InputError(f"{root} needs at least two class folders (ImageFolder layout: {root}/CLASS/image.jpg)")
    if labels_file is None:
        return folders, [Label(readable_class_name(f), readable_class_name(f)) for f in folders]
    from geobimors.files import read_regular_file
    from geobimors.labels import MAX_LABELS_FILE_BYTES

    try:
        text = read_regular_file(labels_file, "labels file", MAX_LABELS_FILE_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {labels_file}: {exc}") from None
    given = {label.name: label for label in parse_labels(text.splitlines(), f"labels file {labels_file}")}
    missing = [f for f in folders if f not in given]
    if missing:
        raise InputError(
            f"labels file {labels_file} has no 'FolderName: prompt text' line for {', '.join(missing[:5])}"
        )
    texts = [given[f].prompt for f in folders]
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise InputError(
            f"labels file {labels_file} gives several folders the same text {repeated[0]!r}; make each unique"
        )
    return folders, [Label(given[f].prompt, given[f].prompt) for f in folders]


def load_image_folder(
    root: str | os.PathLike[str],
    shots: int | None = None,
    seed: int = 0,
    labels_file: str | os.PathLike[str] | None = None,
    exclude: set[str] | None = None,
    at_most: bool = False,
) -> LabelledImages:
    """Load an ImageFolder tree, optionally ``shots`` images per class sampled with ``seed``.

    Args:
        root: folder with one sub-folder of images per class.
        shots: images per class (all when ``None``).
        seed: sampling seed.
        labels_file: ``FolderName: prompt text`` lines (else readable folder names).
        exclude: image paths to leave out (e.g. the training shots, for validation).
        at_most: take all images of classes with fewer than ``shots`` (else refuse).
    """
    root = Path(root)
    folders, labels = folder_labels(root, labels_file)
    files = {
        folder: sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for folder in folders
    }
    return _sample_images(root, folders, labels, files, shots, seed, exclude, at_most)


def load_image_list(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    shots: int | None = None,
    seed: int = 0,
    labels_file: str | os.PathLike[str] | None = None,
) -> LabelledImages:
    """Load the images of a split file: paths relative to ``root``, the class is their folder.

    Class indexes follow every class folder of ``root`` (sorted), so train, val
    and test images of one dataset share them.

    Args:
        root: the ImageFolder tree the paths are relative to.
        paths: ``CLASS/image.jpg`` paths (e.g. one split of ``benchmarks/splits/*.json``).
        shots: images per class sampled with ``seed`` from the listed ones (all when ``None``).
        seed: sampling seed.
        labels_file: ``FolderName: prompt text`` lines (else readable folder names).
    """
    root = Path(root)
    folders, labels = folder_labels(root, labels_file)
    files: dict[str, list[Path]] = {folder: [] for folder in folders}
    for path in sorted(paths):
        folder = Path(path).parts[0]
        if folder not in files:
            raise InputError(f"split path {path} is not in a class folder of {root}")
        files[folder].append(root / path)
    return _sample_images(root, folders, labels, files, shots, seed, None, at_most=False)


def _sample_images(
    root: Path,
    folders: list[str],
    labels: list[Label],
    files_by_folder: dict[str, list[Path]],
    shots: int | None,
    seed: int,
    exclude: set[str] | None,
    at_most: bool,
) -> LabelledImages:
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    targets: list[int] = []
    for index, folder in enumerate(folders):
        files = files_by_folder[folder]
        if exclude:
            files = [p for p in files if str(p) not in exclude]
        if not files:
            raise InputError(f"class folder {root / folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if shots is not None and not (at_most and len(files) <= shots):
            if len(files) < shots:
                raise InputError(f"class folder {root / folder} has {len(files)} images, fewer than --shots {shots}")
            files = [files[i] for i in sorted(rng.choice(len(files), size=shots, replace=False))]
        paths += files
        targets += [index] * len(files)
    # Read on demand: a folder of any size is evaluated or embedded one batch at a time.
    images = ImageFiles.open(paths)
    return LabelledImages(images, np.array(targets, dtype=np.int64), labels, [str(p) for p in paths])


def images_left_per_class(root: str | os.PathLike[str], exclude: set[str]) -> dict[str, int]:
    """Images of each class folder not in ``exclude`` (e.g. what validation can still use)."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        folder: sum(
            1 for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and str(p) not in exclude
        )
        for folder in folders
    }


def load_polygons(
    gpkg: str | os.PathLike[str],
    scene: str,
    label_column: str = "label",
    chip_size: str | None = None,
    model: str = "mini",
    bands: tuple[int, ...] | None = None,
    gsd: float | None = None,
    layer: str | None = None,
    min_purity: float = DEFAULT_MIN_PURITY,
) -> LabelledImages:
    """Chips of the map grid that labelled polygons or points cover (see :func:`load_geometries`)."""
    return load_geometries(gpkg, scene, label_column, chip_size, model, bands, gsd, layer, min_purity)[0]


def load_geometries(
    path: str | os.PathLike[str],
    scene: str,
    label_column: str = "label",
    chip_size: str | None = None,
    model: str = "mini",
    bands: tuple[int, ...] | None = None,
    gsd: float | None = None,
    layer: str | None = None,
    min_purity: float = DEFAULT_MIN_PURITY,
    allow_network: bool = False,
) -> tuple[LabelledImages, np.ndarray]:
    """Every chip of the map grid that labelled polygons (or points) cover, read as ``geobimors map`` reads it.

    A chip is a training example of class K when K's polygons cover at least
    ``min_purity`` of it (points: when at least that share of the points inside
    it are K); chips with less than half valid pixels are skipped.

    Args:
        path: vector file with polygons or points and a label column.
        scene: the raster the geometries lie on.
        label_column: attribute holding each geometry's class.
        chip_size: chip size (default: the model's, else 224 px).
        model: model name (for its default chip size and ground resolution).
        bands: band indexes for RGB.
        gsd: ground resolution to resample to.
        layer: layer of the vector file (default: the first).
        min_purity: fraction of a chip one class must cover.
        allow_network: let a local scene file read network sources (``--allow-network``).

    Returns:
        The chips, and for each the index (row of the file) of the geometry
        covering most of it, so validation can hold out whole geometries.
    """
    import geopandas as gpd
    import shapely
    from rasterio.transform import array_bounds

    from geobimors.raster.read import ChipReader
    from geobimors.run.plan import MapSettings, plan_map
    from geobimors.vector.gpkg import chip_polygons
    from geobimors.vector.overlay import class_coverage, is_points, warn_assumed_crs

    if not 0.0 < min_purity <= 1.0:
        raise InputError(f"--min-purity must be in (0, 1], got {min_purity}")
    try:
        frame = gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises several types
        raise InputError(f"cannot read polygons or points from {path}: {str(exc).splitlines()[0]}") from None
    if label_column not in frame.columns:
        raise InputError(f"{path} has no {label_column!r} column; pass --label-column (columns: {list(frame.columns)})")
    frame = frame[frame[label_column].notna() & frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame.reset_index(drop=True)
    names = sorted({str(v) for v in frame[label_column]})
    if len(names) < 2:
        raise InputError(f"{path} needs geometries of at least two classes in {label_column!r}")
    labels = [Label(n, n) for n in names]
    plan = plan_map(
        MapSettings(
            scene=scene,
            labels=tuple(labels),
            model=model,
            chip_size=chip_size,
            gsd=gsd,
            bands=bands,
            min_valid=0.0,
            allow_network=allow_network,
        )
    )
    warn_assumed_crs((str(path), frame.crs), (f"scene {plan.scene.name}", plan.scene.crs))
    own_crs, scene_crs = (crs.to_string() if crs is not None else "none" for crs in (frame.crs, plan.scene.crs))
    if plan.scene.crs is not None and frame.crs is not None and frame.crs != plan.scene.crs:
        frame = frame.to_crs(plan.scene.crs)
    geometries = np.asarray(frame.geometry.values)
    kinds = shapely.get_type_id(geometries)
    points = is_points(geometries)
    if not points and np.isin(kinds, [shapely.GeometryType.POINT, shapely.GeometryType.MULTIPOINT]).any():
        raise InputError(f"{path} mixes points and polygons; give one kind per file")
    kind = "points" if points else "polygons"
    footprint = shapely.box(*array_bounds(plan.scene.height, plan.scene.width, plan.scene.transform))
    if not shapely.intersects(geometries, footprint).any():
        raise InputError(
            f"none of the {kind} of {path} lies on scene {plan.scene.name}; check that they cover the same place "
            f"(CRS of {path}: {own_crs}, of the scene: {scene_crs})"
        )
    classes = np.array([names.index(str(v)) for v in frame[label_column]], dtype=np.int64)
    grid = plan.grid
    chips = _chips_under(grid, plan.scene.transform, shapely.bounds(geometries))
    footprints = chip_polygons(plan.scene.transform, grid.footprint_windows(chips))
    coverage = class_coverage(footprints, geometries, classes, len(names))
    keep = np.flatnonzero((coverage.majority >= 0) & (coverage.purity >= min_purity) & (coverage.covered >= min_purity))
    reader = ChipReader(plan.read)
    images, targets, sources, groups = [], [], [], []
    for i in keep:
        chip = chips[i]
        pixels, valid = reader.read(chip)
        if valid < 0.5:
            continue
        images.append(pixels)
        targets.append(int(coverage.majority[i]))
        groups.append(int(coverage.dominant[i]))
        sources.append(f"{path}#{int(coverage.dominant[i])}@chip({chip.row},{chip.col})")
    if not images:
        raise InputError(
            f"no chip of {scene} is covered to --min-purity {min_purity} by the {kind} of {path} (on valid pixels); "
            "lower --min-purity, or use a smaller --chip-size"
        )
    found = np.bincount(np.array(targets), minlength=len(names))
    empty = [names[k] for k in np.flatnonzero(found == 0)]
    if empty:
        warn(
            f"no chip is covered to --min-purity {min_purity} by class {', '.join(repr(e) for e in empty[:5])}; "
            "it is left out of training (draw larger polygons, lower --min-purity or use a smaller --chip-size)"
        )
    data = LabelledImages(np.stack(images), np.array(targets, dtype=np.int64), labels, sources)
    return data, np.array(groups, dtype=np.int64)


def _chips_under(grid: ChipGrid, transform: Affine, bounds: np.ndarray) -> list[Chip]:
    """Grid chips whose windows meet the pixel bounding box of any of the (minx, miny, maxx, maxy) bounds."""
    inverse = ~transform
    seen: set[tuple[int, int]] = set()
    chips: list[Chip] = []
    for minx, miny, maxx, maxy in bounds:
        corners = [inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)]
        cols = [c for c, _ in corners]
        rows = [r for _, r in corners]
        col_lo = max(0, math.floor((min(cols) - grid.chip_width) / grid.stride_x) + 1)
        col_hi = min(grid.n_cols - 1, math.floor(max(cols) / grid.stride_x))
        row_lo = max(0, math.floor((min(rows) - grid.chip_height) / grid.stride_y) + 1)
        row_hi = min(grid.n_rows - 1, math.floor(max(rows) / grid.stride_y))
        for row in range(row_lo, row_hi + 1):
            for col in range(col_lo, col_hi + 1):
                if (row, col) not in seen:
                    seen.add((row, col))
                    chips.append(grid.chip(row, col))
    return chips
