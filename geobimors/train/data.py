"""Labelled images for training and evaluation: ImageFolder trees and polygons over a raster.

Class folder names become label text by splitting CamelCase and underscores
(``SeaLake`` -> ``sea lake``), or through a labels file with ``FolderName: prompt
text`` lines. Polygons over a raster are read as chips exactly as ``geobimors map``
reads them (same bands, scaling and resampling).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geobimors.errors import InputError
from geobimors.labels import Label, camel_to_words, parse_labels
from geobimors.raster.images import IMAGE_SUFFIXES, read_rgb


@dataclass
class LabelledImages:
    """Images with class targets.

    Attributes:
        images: (N, H, W, 3) uint8 RGB images (all the same size).
        targets: (N,) class index of each image.
        labels: the classes, in target order.
        sources: where each image came from (file path or polygon id).
    """

    images: np.ndarray
    targets: np.ndarray
    labels: list[Label]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, classes: Sequence[int]) -> LabelledImages:
        """Images of some classes only, re-indexed to those classes."""
        classes = list(classes)
        keep = np.isin(self.targets, classes)
        remap = {old: new for new, old in enumerate(classes)}
        return LabelledImages(
            self.images[keep],
            np.array([remap[int(t)] for t in self.targets[keep]], dtype=np.int64),
            [self.labels[c] for c in classes],
            [s for s, k in zip(self.sources, keep) if k],
        )


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
        return folders, [Label(camel_to_words(f), camel_to_words(f)) for f in folders]
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
    return folders, [Label(camel_to_words(f), given[f].prompt) for f in folders]


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
        labels_file: ``FolderName: prompt text`` lines (else folder names are split).
        exclude: image paths to leave out (e.g. the training shots, for validation).
        at_most: take all images of classes with fewer than ``shots`` (else refuse).
    """
    root = Path(root)
    folders, labels = folder_labels(root, labels_file)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    targets: list[int] = []
    for index, folder in enumerate(folders):
        files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
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
    first = read_rgb(paths[0], None)
    size = (first.shape[1], first.shape[0])
    images = np.stack([first] + [read_rgb(p, size) for p in paths[1:]])
    return LabelledImages(images, np.array(targets, dtype=np.int64), labels, [str(p) for p in paths])


def load_polygons(
    gpkg: str | os.PathLike[str],
    scene: str,
    label_column: str = "label",
    chip_size: str | None = None,
    model: str = "mini",
    bands: tuple[int, ...] | None = None,
    gsd: float | None = None,
    layer: str | None = None,
) -> LabelledImages:
    """Chips centred on labelled polygons, read from the scene the way ``geobimors map`` reads chips.

    Args:
        gpkg: vector file with polygons and a label column.
        scene: the raster the polygons lie on.
        label_column: attribute holding each polygon's class.
        chip_size: chip size (default: the model's, else 224 px).
        model: model name (for its default chip size and ground resolution).
        bands: band indexes for RGB.
        gsd: ground resolution to resample to.
        layer: layer of the vector file (default: the first).
    """
    import geopandas as gpd
    from rasterio.windows import Window

    from geobimors.raster.grid import Chip
    from geobimors.raster.read import ChipReader
    from geobimors.run.plan import MapSettings, plan_map

    try:
        frame = gpd.read_file(gpkg, layer=layer)
    except Exception as exc:  # pyogrio raises several types
        raise InputError(f"cannot read polygons from {gpkg}: {str(exc).splitlines()[0]}") from None
    if label_column not in frame.columns:
        raise InputError(f"{gpkg} has no {label_column!r} column; pass --label-column (columns: {list(frame.columns)})")
    frame = frame[frame[label_column].notna() & frame.geometry.notna()]
    names = sorted({str(v) for v in frame[label_column]})
    if len(names) < 2:
        raise InputError(f"{gpkg} needs polygons of at least two classes in {label_column!r}")
    labels = [Label(n, n) for n in names]
    plan = plan_map(
        MapSettings(
            scene=scene, labels=tuple(labels), model=model, chip_size=chip_size, gsd=gsd, bands=bands, min_valid=0.0
        )
    )
    if plan.scene.crs is not None and frame.crs is not None and frame.crs != plan.scene.crs:
        frame = frame.to_crs(plan.scene.crs)
    grid = plan.grid
    inverse = ~plan.scene.transform
    reader = ChipReader(plan.read)
    images, targets, sources = [], [], []
    for index, row in frame.iterrows():
        point = row.geometry.representative_point()
        col, line = inverse @ (point.x, point.y)
        col_off = round(col - grid.chip_width / 2)
        row_off = round(line - grid.chip_height / 2)
        col_off = min(max(col_off, 0), grid.width - grid.chip_width)
        row_off = min(max(row_off, 0), grid.height - grid.chip_height)
        if not (0 <= col < grid.width and 0 <= line < grid.height):
            continue
        chip = Chip(-1, -1, row_off, col_off, grid.chip_height, grid.chip_width)
        pixels, valid = reader.read(chip)
        if valid < 0.5:
            continue
        images.append(pixels)
        targets.append(names.index(str(row[label_column])))
        sources.append(f"{gpkg}#{index}@{Window(col_off, row_off, grid.chip_width, grid.chip_height)}")
    if not images:
        raise InputError(f"no polygon of {gpkg} lies on valid pixels of {scene}")
    return LabelledImages(np.stack(images), np.array(targets, dtype=np.int64), labels, sources)
