"""Adapting from few examples: readable class names, splits, polygons/points chips, probe and Tip-Adapter heads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
import torch.nn.functional as F

from geobimors.class_names import readable_class_name
from geobimors.heads.checkpoint import load_head, read_metadata, save_head
from geobimors.heads.probe import LinearProbeHead, TipAdapterHead
from geobimors.labels import Label
from geobimors.models.clip import load_model
from geobimors.train.api import load_training_data
from geobimors.train.data import load_geometries, load_image_list
from geobimors.train.embedding import fit_embedding_head, fit_probe_weights
from geobimors.vector.overlay import class_coverage

from cli_helpers import run_cli
from rasters import UTM32N, make_geotiff, random_rgb

ROOT = Path(__file__).resolve().parents[1]


def test_readable_class_names() -> None:
    assert readable_class_name("denseresidential") == "dense residential area"
    assert readable_class_name("DenseResidential") == "dense residential area"
    assert readable_class_name("SeaLake") == "sea or lake"
    assert readable_class_name("storagetanks") == "storage tanks"
    assert readable_class_name("SnowField") == "snow field"  # unknown: split into words


def test_split_files_are_stratified_disjoint_and_loadable() -> None:
    record = json.loads((ROOT / "benchmarks" / "splits" / "ucmerced.json").read_text())
    splits = record["splits"]
    sets = [set(splits[name]) for name in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert record["seed"] == 0 and "make_splits.py" in record["command"]
    classes = {p.split("/")[0] for p in splits["test"]}
    assert len(classes) == 21 and all(sum(p.startswith(c + "/") for p in splits["test"]) == 20 for c in classes)
    root = ROOT.parent / "shared" / "data" / "ucmerced"
    if not root.is_dir():
        pytest.skip("../shared/data/ucmerced is not available")
    data = load_image_list(root, splits["train"], shots=1, seed=0)
    assert len(data) == 21 and data.labels[6].name == "dense residential area"
    assert all(Path(s).relative_to(root).as_posix() in sets[0] for s in data.sources)


def test_fewshot_folder_without_images_left_trains_with_a_warning(
    capsys: pytest.CaptureFixture[str], tiny_model: str, eurosat: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "ten"
    for name in ("Forest", "SeaLake", "Highway"):
        (folder / name).mkdir(parents=True)
        for path in sorted((eurosat / "train" / name).glob("*.jpg"))[:5]:
            shutil.copy(path, folder / name / path.name)
    labels = tmp_path / "labels.txt"
    labels.write_text("Forest: woodland\nSeaLake: open water\nHighway: a motorway\n")
    out = tmp_path / "probe.safetensors"
    args = ["train", folder, "-m", tiny_model, "--head", "probe", "--shots", "5", "-l", labels, "-o", out]
    result = run_cli(capsys, *args)
    assert result.exit_code == 0, result.err
    assert "no image left for validation" in result.err and "cross-validate" in result.err
    assert "woodland, a motorway, open water" in result.out  # the labels file's text, not folder names
    meta = read_metadata(out)
    assert meta["training"]["validation_examples"] == 0
    assert meta["training"]["fit"]["selection"].startswith("3-fold cross-validation")
    # Prompt learners keep their last epoch instead of failing.
    out = tmp_path / "coop.safetensors"
    args = ["train", folder, "-m", tiny_model, "--head", "coop", "--shots", "5", "--epochs", "1", "-o", out, "-q"]
    assert run_cli(capsys, *args).exit_code == 0
    # Without --head: Tip-Adapter, the default (the best mean of the few-shot table in docs/benchmarks.md).
    out = tmp_path / "default.safetensors"
    assert run_cli(capsys, "train", folder, "-m", tiny_model, "--shots", "5", "-o", out, "-q").exit_code == 0
    assert read_metadata(out)["head"] == "tip"


def _clustered(
    n_per_class: int, anchor: torch.Tensor, seed: int, spread: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around per-class centres that differ from the text anchors (so fitting has to move)."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(anchor.shape, generator=torch.Generator().manual_seed(99)), dim=-1)
    targets = torch.arange(len(anchor)).repeat_interleave(n_per_class)
    noise = torch.randn((len(targets), anchor.shape[1]), generator=generator) * spread / anchor.shape[1] ** 0.5
    return F.normalize(centres[targets] + noise, dim=-1), targets


def test_probe_follows_the_data_and_stays_near_text_when_told() -> None:
    anchor = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    train_x, train_y = _clustered(8, anchor, 0)
    test_x, test_y = _clustered(20, anchor, 1)
    zero_shot = ((test_x @ anchor.T).argmax(1) == test_y).float().mean()
    weight, bias = fit_probe_weights(train_x, train_y, anchor, scale=20.0, weight_decay=1e-3)
    fitted = ((20.0 * test_x @ weight.T + bias).argmax(1) == test_y).float().mean()
    assert fitted > 0.95 and fitted > zero_shot + 0.3
    weight, _ = fit_probe_weights(train_x, train_y, anchor, scale=20.0, weight_decay=1e4)
    assert torch.allclose(weight, anchor, atol=1e-3)  # a strong pull keeps the zero-shot classifier


@pytest.mark.parametrize("kind", [LinearProbeHead, TipAdapterHead])
def test_embedding_heads_fit_save_load_and_classify_from_embeddings(
    kind: type, tiny_model: str, tmp_path: Path
) -> None:
    clip = load_model(tiny_model, device="cpu")
    labels = [Label(n, n) for n in ("forest", "water", "fields")]
    head = kind(clip, labels)
    train_x, train_y = _clustered(6, head.text_weights, 0)
    val_x, val_y = _clustered(4, head.text_weights, 1)
    result, details = fit_embedding_head(head, (train_x, train_y.numpy()), (val_x, val_y.numpy()))
    assert details["selection"] == "validation images" and result.best_val_accuracy > 0.9
    test_x, test_y = _clustered(10, head.text_weights, 2)
    logits = head.logits_from_embeddings(test_x)
    assert (logits.argmax(1) == test_y).float().mean() > 0.9
    path = save_head(head, tmp_path / "head.safetensors", {"seed": 0})
    loaded = load_head(path, clip)
    assert type(loaded) is kind and torch.allclose(loaded.logits_from_embeddings(test_x), logits, atol=1e-5)
    # Pixels go through the same path: forward == logits_from_embeddings(encode_images(...)).
    images = clip.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert torch.allclose(loaded.logits(images), loaded.logits_from_embeddings(clip.encode_images(images)), atol=1e-5)
    # A class it never saw falls back to its text (probe) or gets no cache votes (tip).
    loaded.set_labels([labels[1], Label("snow", "snow"), labels[0]])
    relabelled = loaded.logits_from_embeddings(test_x)
    assert relabelled.shape == (len(test_x), 3)
    assert torch.allclose(relabelled[:, [2, 0]], logits[:, [0, 1]], atol=1e-5)


def test_class_coverage_of_chips_by_polygons_and_points() -> None:
    chips = shapely.box(np.array([0, 10, 20]), 0, np.array([10, 20, 30]), 10)
    polygons = np.array([shapely.box(0, 0, 14, 10), shapely.box(14, 0, 30, 4)])
    coverage = class_coverage(chips, polygons, np.array([0, 1]), 2)
    np.testing.assert_allclose(coverage.fractions, [[1.0, 0.0], [0.4, 0.24], [0.0, 0.4]])
    np.testing.assert_allclose(coverage.purity, [1.0, 0.4 / 0.64, 1.0])
    assert coverage.majority.tolist() == [0, 0, 1] and coverage.dominant.tolist() == [0, 0, 1]
    points = shapely.points([1, 2, 12, 13, 15], [1, 1, 1, 1, 1])
    coverage = class_coverage(chips, points, np.array([0, 0, 0, 1, 1]), 2)
    np.testing.assert_allclose(coverage.fractions, [[1, 0], [1 / 3, 2 / 3], [0, 0]])
    assert coverage.majority.tolist() == [0, 1, -1]


def test_training_from_polygons_uses_every_covered_chip_and_points_work(tiny_model: str, tmp_path: Path) -> None:
    # 64 x 64 px scene at 10 m; 16 px chips -> a 4 x 4 grid of 160 m chips.
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    x0, y0 = 500_000.0, 5_000_000.0
    polygons = gpd.GeoDataFrame(
        {
            "cover": ["forest", "forest", "water"],
            "geometry": [
                shapely.box(x0, y0 - 320, x0 + 320, y0),  # exactly 2 x 2 chips
                shapely.box(x0 + 320, y0 - 100, x0 + 480, y0),  # 62% of one chip: below the purity threshold
                shapely.box(x0, y0 - 640, x0 + 640, y0 - 480),  # one whole row of 4 chips
            ],
        },
        crs=UTM32N,
    )
    vector = tmp_path / "polygons.gpkg"
    polygons.to_file(vector)
    data, groups = load_geometries(vector, str(scene), "cover", chip_size="16", model=tiny_model)
    assert sorted(data.targets.tolist()) == [0] * 4 + [1] * 4
    assert set(groups[data.targets == 0].tolist()) == {0} and set(groups[data.targets == 1].tolist()) == {2}
    assert data.images.shape[1:3] == (16, 16)
    loose, _ = load_geometries(vector, str(scene), "cover", chip_size="16", model=tiny_model, min_purity=0.5)
    assert (loose.targets == 0).sum() == 5
    # Whole polygons are held out for validation; training takes every chip of the rest.
    more = pd_concat(polygons, x0, y0)
    more.to_file(tmp_path / "more.gpkg")
    loaded = load_training_data(
        tmp_path / "more.gpkg", None, scene=str(scene), label_column="cover", model=tiny_model, chip_size="16"
    )
    assert loaded.val is not None and len(loaded.train) == len(loaded.val) == 8
    polygon_of = lambda source: source.split("#")[1].split("@")[0]  # noqa: E731
    assert not {polygon_of(s) for s in loaded.train.sources} & {polygon_of(s) for s in loaded.val.sources}
    # Points: the chip under each point.
    points = gpd.GeoDataFrame(
        {"label": ["forest", "water", "water"]},
        geometry=gpd.points_from_xy([x0 + 5, x0 + 600, x0 + 610], [y0 - 5, y0 - 600, y0 - 590]),
        crs=UTM32N,
    )
    points.to_file(tmp_path / "points.gpkg")
    chips, _ = load_geometries(tmp_path / "points.gpkg", str(scene), chip_size="16", model=tiny_model)
    assert chips.targets.tolist() == [0, 1] and len(chips.sources) == 2


def pd_concat(polygons: gpd.GeoDataFrame, x0: float, y0: float) -> gpd.GeoDataFrame:
    """The polygons plus one more of each class (so each class has two to hold one out)."""
    extra = gpd.GeoDataFrame(
        {
            "cover": ["forest", "water"],
            "geometry": [shapely.box(x0 + 320, y0 - 320, x0 + 640, y0), shapely.box(x0, y0 - 480, x0 + 640, y0 - 320)],
        },
        crs=UTM32N,
    )
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat([polygons.iloc[[0, 2]], extra], ignore_index=True), crs=UTM32N)


def test_polygons_without_a_pure_chip_say_what_to_do(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    frame = gpd.GeoDataFrame(
        {"label": ["a", "b"]},
        geometry=[
            shapely.box(500_000, 4_999_950, 500_050, 5_000_000),
            shapely.box(500_100, 4_999_950, 500_150, 5_000_000),
        ],
        crs=UTM32N,
    )
    frame.to_file(tmp_path / "small.gpkg")
    args = ["train", tmp_path / "small.gpkg", "--scene", scene, "-m", tiny_model, "--chip-size", "16"]
    result = run_cli(capsys, *args, "--head", "probe", "-o", tmp_path / "h.safetensors")
    assert result.exit_code == 2 and "--min-purity" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "h.safetensors").exists()


def test_polygons_off_the_scene_or_without_crs_say_so(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    """Polygons that miss the scene get an error naming both CRSs (not the --min-purity advice); polygons
    without a CRS are read in the scene's, with a warning."""
    scene = make_geotiff(tmp_path / "scene.tif", random_rgb(64, 64))
    boxes = [shapely.box(500_000, 4_999_680, 500_320, 5_000_000), shapely.box(500_320, 4_999_680, 500_640, 5_000_000)]
    # The same boxes in degrees (a CRS mix-up a user can make): they lie far from the UTM scene.
    elsewhere = gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=boxes, crs=UTM32N).to_crs("EPSG:3857")
    elsewhere = elsewhere.set_crs("EPSG:4326", allow_override=True)
    elsewhere.to_file(tmp_path / "elsewhere.gpkg")
    args = ["train", tmp_path / "elsewhere.gpkg", "--scene", scene, "-m", tiny_model, "--chip-size", "16"]
    result = run_cli(capsys, *args, "--head", "probe", "-o", tmp_path / "h.safetensors")
    assert result.exit_code == 2 and "Traceback" not in result.err
    assert "none of the polygons of" in result.err and "EPSG:4326" in result.err and "EPSG:32632" in result.err
    assert "--min-purity" not in result.err
    assert not (tmp_path / "h.safetensors").exists()
    gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=boxes).to_file(tmp_path / "bare.gpkg")
    with pytest.warns(UserWarning, match=r"bare.gpkg has no CRS; assumed to be in the CRS of scene scene.tif"):
        data, _ = load_geometries(tmp_path / "bare.gpkg", str(scene), chip_size="16", model=tiny_model)
    assert sorted(data.targets.tolist()) == [0] * 4 + [1] * 4


def test_transductive_refinement_keeps_zero_shot_without_context_and_follows_neighbours() -> None:
    from geobimors.train.transductive import grid_neighbours, refine

    rows, cols = np.divmod(np.arange(9), 3)
    neighbours = grid_neighbours(rows, cols)
    assert torch.allclose(torch.sparse.sum(neighbours, dim=1).to_dense(), torch.ones(9))
    assert neighbours.to_dense()[4].count_nonzero() == 8 and neighbours.to_dense()[0].count_nonzero() == 3
    logits = torch.tensor([[2.0, 0.0]] * 9)
    logits[4] = torch.tensor([0.0, 0.5])  # the centre chip alone leans to class 1
    features = F.normalize(torch.randn(9, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    plain = refine(features, logits, likelihood_weight=0.0)
    assert torch.allclose(plain, logits.softmax(1), atol=1e-6)
    smoothed = refine(features, logits, likelihood_weight=0.0, neighbours=neighbours, spatial_weight=2.0)
    assert plain[4].argmax() == 1 and smoothed[4].argmax() == 0
    assert (smoothed.argmax(1) == 0).all()
