"""A reference-labelled scene from real imagery: EuroSAT chips mosaicked into a georeferenced GeoTIFF.

    python benchmarks/make_reference_scene.py [--cells 16] [--seed 0] [--out benchmarks/data/reference]

The scene is ``cells x cells`` EuroSAT chips of 64 px (Sentinel-2 RGB at 10 m)
laid out in spatially coherent regions: a Voronoi partition of the grid around
``cells`` random seeds, each region one class, each cell a different chip of
its region's class, so neighbouring chips tend to share a class as on the ground
and class areas are unequal. Written to ``--out``:

* ``val-scene.tif`` / ``val-labels.tif``: chips from the EuroSAT **val** split
  (the evaluation scene), RGB uint8 and a uint8 label raster (class codes 1..10,
  0 = nodata), EPSG:32632 (UTM 32N), 10 m pixels, one transform for both;
* ``train-scene.tif`` / ``train-labels.tif`` / ``train-regions.gpkg``: the same
  built from the **train** split with another layout (seed + 1), and its regions as
  labelled polygons (column ``label``) for training heads from polygons;
* ``mapping.csv``: ``map label,reference class`` rows from the readable class
  names (:mod:`geobimors.class_names`) to the codes.

No chip appears twice in a scene; the val scene uses only val chips.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

ROOT = Path(__file__).resolve().parents[1]
EUROSAT = ROOT.parent / "shared" / "data" / "eurosat_rgb"
CHIP = 64
PIXEL = 10.0
ORIGIN = (500_000.0, 5_300_000.0)
CRS_UTM = CRS.from_epsg(32632)


def region_layout(cells: int, n_classes: int, seed: int, n_regions: int | None = None) -> np.ndarray:
    """(cells, cells) class index per cell: Voronoi regions around random seeds, each a random class."""
    rng = np.random.default_rng(seed)
    n_regions = n_regions or cells
    centres = rng.uniform(0, cells, size=(n_regions, 2))
    region_class = rng.integers(0, n_classes, size=n_regions)
    region_class[:n_classes] = rng.permutation(n_classes)[: min(n_classes, n_regions)]  # every class when possible
    rows, cols = np.mgrid[0:cells, 0:cells] + 0.5
    distance = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    return region_class[distance.argmin(axis=-1)]


def build_scene(
    split_root: Path, out_scene: Path, out_labels: Path, cells: int, seed: int, n_regions: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Write a mosaic and its label raster; return the layout (class index per cell) and the class folders."""
    folders = sorted(p.name for p in split_root.iterdir() if p.is_dir())
    layout = region_layout(cells, len(folders), seed, n_regions)
    rng = np.random.default_rng(seed)
    pools = {k: rng.permutation(sorted((split_root / f).iterdir())).tolist() for k, f in enumerate(folders)}
    image = np.zeros((3, cells * CHIP, cells * CHIP), dtype=np.uint8)
    for r in range(cells):
        for c in range(cells):
            path = pools[int(layout[r, c])].pop()
            with Image.open(path) as chip:
                rgb = np.asarray(chip.convert("RGB").resize((CHIP, CHIP)))
            image[:, r * CHIP : (r + 1) * CHIP, c * CHIP : (c + 1) * CHIP] = rgb.transpose(2, 0, 1)
    labels = np.kron(layout + 1, np.ones((CHIP, CHIP), dtype=np.int64)).astype(np.uint8)
    transform = Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    profile = {
        "driver": "GTiff",
        "width": cells * CHIP,
        "height": cells * CHIP,
        "crs": CRS_UTM,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(out_scene, "w", count=3, dtype="uint8", photometric="RGB", **profile) as dst:
        dst.write(image)
    with rasterio.open(out_labels, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(labels, 1)
    return layout, folders


def regions_to_polygons(labels_path: Path, out: Path, names: list[str]) -> None:
    """Vectorise a label raster into labelled polygons (one per connected region)."""
    import geopandas as gpd
    import shapely.geometry
    from rasterio.features import shapes

    with rasterio.open(labels_path) as ds:
        data = ds.read(1)
        records = [
            {"label": names[int(value) - 1], "geometry": shapely.geometry.shape(geometry)}
            for geometry, value in shapes(data, mask=data > 0, transform=ds.transform)
        ]
        crs = ds.crs
    gpd.GeoDataFrame(records, geometry="geometry", crs=crs).to_file(out, layer="regions")


def main() -> None:
    from geobimors.class_names import EUROSAT as NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "reference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _, folders = build_scene(
        EUROSAT / "val", args.out / "val-scene.tif", args.out / "val-labels.tif", args.cells, args.seed
    )
    build_scene(
        EUROSAT / "train", args.out / "train-scene.tif", args.out / "train-labels.tif", args.cells, args.seed + 1
    )
    names = [NAMES[f] for f in folders]
    train_polygons = args.out / "train-regions.gpkg"
    train_polygons.unlink(missing_ok=True)
    regions_to_polygons(args.out / "train-labels.tif", train_polygons, names)
    (args.out / "mapping.csv").write_text(
        "map label,reference class\n" + "".join(f"{name},{k + 1}\n" for k, name in enumerate(names))
    )
    (args.out / "labels.txt").write_text("".join(f"{name}\n" for name in names))
    print(f"wrote {args.out}: {args.cells} x {args.cells} chips of {CHIP} px at {PIXEL} m, EPSG:32632")


if __name__ == "__main__":
    main()
