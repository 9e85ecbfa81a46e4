"""Test-time augmentation (``--tta``): features averaged over turned and mirrored views of each chip.

Overhead imagery has no "up", so the mean over the 8 turns and mirror images of a chip is the same
for the chip turned or mirrored: the tests check that property end to end (map, embed, example
search) on chips turned in place inside a GeoTIFF, against runs without it, where it does not hold.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch

import geobimors
from geobimors.embeddings.store import open_store
from geobimors.errors import ModelError
from geobimors.models.clip import dihedral_views, load_model
from geobimors.run.plan import MapSettings, plan_map

from cli_helpers import CliResult, assert_one_line_error, run_cli
from rasters import make_geotiff, random_rgb

CHIP = 16


def _turn_each_chip(data: np.ndarray, turns: int = 1, mirror: bool = False) -> np.ndarray:
    """(bands, rows, cols) pixels with every CHIP x CHIP block turned (and mirrored) in place."""
    out = data.copy()
    for r in range(0, data.shape[1], CHIP):
        for c in range(0, data.shape[2], CHIP):
            block = data[:, r : r + CHIP, c : c + CHIP]
            block = block[:, :, ::-1] if mirror else block
            out[:, r : r + CHIP, c : c + CHIP] = np.rot90(block, turns, axes=(1, 2))
    return out


@pytest.fixture()
def scenes(tmp_path: Path) -> tuple[Path, Path]:
    """A 96 x 128 px scene, and the same with each 16 px chip turned 90 degrees and mirrored."""
    data = random_rgb(96, 128, seed=3)
    return (
        make_geotiff(tmp_path / "scene.tif", data),
        make_geotiff(tmp_path / "turned.tif", _turn_each_chip(data, turns=1, mirror=True)),
    )


def test_views_are_the_turns_and_mirror_images() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    for count in (2, 4, 8):
        views = dihedral_views(images, count)
        assert len(views) == count
        assert torch.equal(views[0], images)
        assert len({v.numpy().tobytes() for v in views}) == count  # all different on an asymmetric image
    assert torch.equal(dihedral_views(images, 2)[1], images.flip(-1))
    # The 8 views of a turned or mirrored image are the same 8 images in another order.
    for other in (torch.rot90(images, 1, (-2, -1)), images.flip(-1)):
        assert {v.numpy().tobytes() for v in dihedral_views(other, 8)} == {
            v.numpy().tobytes() for v in dihedral_views(images, 8)
        }
    with pytest.raises(ModelError, match="--tta 3: use 1"):
        dihedral_views(images, 3)


def test_a_model_with_tta_shares_the_weights_and_is_invariant(tiny_model: str) -> None:
    plain = load_model(tiny_model, "cpu")
    averaged = load_model(tiny_model, "cpu", tta=8)
    assert averaged.model is plain.model and averaged.tta == 8 and plain.tta == 1
    assert load_model(tiny_model, "cpu") is plain  # the cached model is not changed by the other
    chips = torch.rand(3, 3, *plain.image_size, generator=torch.Generator().manual_seed(0))
    turned = torch.rot90(chips, 1, (-2, -1))
    mirrored = chips.flip(-1)
    base = averaged.encode_images(chips)
    for other in (turned, mirrored):
        torch.testing.assert_close(averaged.encode_images(other), base, atol=1e-5, rtol=0)
        assert (plain.encode_images(other) - plain.encode_images(chips)).abs().max() > 1e-3
    # four turns: invariant to turns, not to the mirror image
    four = plain.with_tta(4)
    torch.testing.assert_close(four.encode_images(turned), four.encode_images(chips), atol=1e-5, rtol=0)
    assert (four.encode_images(mirrored) - four.encode_images(chips)).abs().max() > 1e-3
    # the pooled features of the token pass are the averaged ones too
    pooled, tokens = averaged.encode_images_with_tokens(chips)
    torch.testing.assert_close(pooled, base, atol=1e-5, rtol=0)
    assert tokens.shape[0] == 3
    torch.testing.assert_close(norms := base.norm(dim=-1), torch.ones_like(norms))


def _run_each(
    capsys: pytest.CaptureFixture[str],
    command: str,
    scenes: tuple[Path, Path],
    options: list[object],
    folder: Path,
    suffix: str,
) -> dict[tuple[str, str], tuple[Path, CliResult]]:
    """``geobimors COMMAND`` on the scene and its turned copy, each with ``--tta 1`` and ``--tta 8``; all succeed.

    Returns:
        The output and the result of each run, by (``scene`` or ``turned``, tta).
    """
    runs = {}
    for tta in ("1", "8"):
        for name, path in zip(("scene", "turned"), scenes):
            out = folder / f"{name}-{tta}{suffix}"
            result = run_cli(capsys, command, path, *options, "--tta", tta, "-o", out)
            assert result.exit_code == 0, result.err
            runs[name, tta] = (out, result)
    return runs


def _chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips").sort_values(["row", "col"]).reset_index(drop=True)


def test_map_with_tta_labels_turned_chips_alike(
    capsys: pytest.CaptureFixture[str], tiny_model: str, scenes: tuple[Path, Path], labels_file: Path, tmp_path: Path
) -> None:
    common = ["-l", labels_file, "-m", tiny_model, "--chip-size", str(CHIP), "--top-k", "4", "--progress", "none"]
    runs = _run_each(capsys, "map", scenes, common, tmp_path, ".gpkg")
    for (_, tta), (_, result) in runs.items():
        assert ("8 turned/mirrored views per chip" in result.err) == (tta == "8")  # the work announced
    maps = {key: _chips(out) for key, (out, _) in runs.items()}
    assert len(maps["scene", "8"]) == 48
    np.testing.assert_allclose(maps["scene", "8"]["score"], maps["turned", "8"]["score"], atol=1e-4)
    assert maps["scene", "8"]["label"].tolist() == maps["turned", "8"]["label"].tolist()
    assert np.abs(maps["scene", "1"]["score"] - maps["turned", "1"]["score"]).max() > 1e-3
    # The Python API takes the same option.
    frame = geobimors.map_scene(scenes[1], labels_file, model=tiny_model, chip_size=CHIP, top_k=4, tta=8)
    frame = frame.sort_values(["row", "col"]).reset_index(drop=True)
    np.testing.assert_allclose(frame["score"], maps["scene", "8"]["score"], atol=1e-4)


def test_the_xarray_api_takes_tta(tiny_model: str, scenes: tuple[Path, Path]) -> None:
    import rioxarray

    labels = ["forest", "water", "fields"]
    results = {
        (name, tta): rioxarray.open_rasterio(path).geobimors.classify(
            labels=labels, model=tiny_model, chip_size=16, tta=tta
        )
        for name, path in zip(("scene", "turned"), scenes)
        for tta in (1, 8)
    }
    np.testing.assert_allclose(results["scene", 8]["score"], results["turned", 8]["score"], atol=1e-4)
    assert float(np.abs(results["scene", 1]["score"] - results["turned", 1]["score"]).max()) > 1e-3


def test_tta_is_part_of_the_run_so_a_resumed_run_cannot_mix_settings(
    tiny_model: str, scenes: tuple[Path, Path], labels_file: Path
) -> None:
    labels = tuple(geobimors.read_labels(labels_file))
    plans = {n: plan_map(MapSettings(str(scenes[0]), labels, tiny_model, chip_size="16", tta=n)) for n in (1, 2, 8)}
    assert len({plan.fingerprint() for plan in plans.values()}) == 3
    assert plans[8].classifier.tta == 8
    with pytest.raises(ModelError, match="--tta 5"):
        plan_map(MapSettings(str(scenes[0]), labels, tiny_model, chip_size="16", tta=5))


def test_embed_with_tta_stores_it_and_example_search_uses_it(
    capsys: pytest.CaptureFixture[str], tiny_model: str, scenes: tuple[Path, Path], tmp_path: Path
) -> None:
    common = ["-m", tiny_model, "--chip-size", str(CHIP), "--dtype", "float32", "--progress", "none"]
    runs = _run_each(capsys, "embed", scenes, common, tmp_path, ".parquet")
    stores = {key: open_store(out) for key, (out, _) in runs.items()}
    assert stores["scene", "8"].meta.tta == 8 and stores["scene", "1"].meta.tta == 1
    assert "mean of 8 turned/mirrored views" in stores["scene", "8"].meta.describe()

    def vectors(store: object) -> np.ndarray:
        table = store.read_table(["row", "col", "embedding"]).to_pandas().sort_values(["row", "col"])  # type: ignore[attr-defined]
        return np.stack(table["embedding"].to_numpy())

    np.testing.assert_allclose(vectors(stores["scene", "8"]), vectors(stores["turned", "8"]), atol=1e-5)
    assert np.abs(vectors(stores["scene", "1"]) - vectors(stores["turned", "1"])).max() > 1e-3
    # Chips of a tta store get other ids than the same chips without it (they are other embeddings).
    assert stores["scene", "8"].meta.settings_key() != stores["scene", "1"].meta.settings_key()
    # An example image is embedded as the store's chips were: a chip's own pixels find it first, turned or not.
    pixels = random_rgb(96, 128, seed=3)[:, 16:32, 32:48]
    example = tmp_path / "example.tif"
    make_geotiff(example, np.rot90(pixels, 1, axes=(1, 2)).copy())
    found = geobimors.search(tmp_path / "turned-8.parquet", like=[str(example)], k=1)
    assert (int(found["row"].iloc[0]), int(found["col"].iloc[0])) == (1, 2)


def test_evaluate_reports_tta_and_bad_values_are_refused(
    capsys: pytest.CaptureFixture[str], tiny_model: str, scenes: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    for i, name in enumerate(("forest", "water")):
        (folder / name).mkdir(parents=True)
        for j in range(2):
            make_geotiff(folder / name / f"{j}.tif", random_rgb(16, 16, seed=10 * i + j))
    report = geobimors.evaluate(folder, model=tiny_model, device="cpu", tta=8)
    assert report["tta"] == 8 and report["n"] == 4
    result = run_cli(capsys, "evaluate", folder, "-m", tiny_model, "--tta", "8")
    assert result.exit_code == 0, result.err
    assert "mean of 8 turned/mirrored views" in result.out
    bad = run_cli(capsys, "map", scenes[0], "-l", "x", "-m", tiny_model, "--tta", "3")
    assert bad.exit_code == 2 and "'3' is not one of '1', '2', '4', '8'" in bad.err
    refused = run_cli(capsys, "map", "--from-embeddings", tmp_path / "none.parquet", "-l", "x", "--tta", "8")
    assert_one_line_error(refused, 2, "--tta does not apply with --from-embeddings")


def test_train_with_tta_learns_the_same_head_from_turned_images(
    capsys: pytest.CaptureFixture[str], tiny_model: str, scenes: tuple[Path, Path], tmp_path: Path
) -> None:
    """``train --tta 8`` fits on view-averaged features: a folder of turned/mirrored copies of the same images
    gives the same head (without it, another head); the checkpoint records it, and a map with other views warns."""
    from PIL import Image
    from safetensors.torch import load_file

    from geobimors.heads.checkpoint import read_metadata

    rng = np.random.default_rng(0)
    folders = {"plain": tmp_path / "plain", "turned": tmp_path / "turned"}
    for cls in ("fields", "forest", "water"):
        for i in range(4):
            image = rng.integers(0, 256, (CHIP, CHIP, 3), dtype=np.uint8)
            for name, pixels in (("plain", image), ("turned", np.rot90(image, i + 1)[:, :: (-1) ** i])):
                (folders[name] / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(pixels)).save(folders[name] / cls / f"{i}.png")
    heads = {}
    for tta in ("1", "8"):
        for name, folder in folders.items():
            out = tmp_path / f"{name}-{tta}.safetensors"
            args = ["train", folder, "-m", tiny_model, "--head", "tip", "--shots", "3", "--val-shots", "1"]
            result = run_cli(capsys, *args, "--tta", tta, "-o", out, "-q")
            assert result.exit_code == 0, result.err
            heads[name, tta] = load_file(str(out))
            assert read_metadata(out)["training"]["tta"] == int(tta)
    for key, value in heads["plain", "8"].items():
        torch.testing.assert_close(heads["turned", "8"][key], value, atol=1e-5, rtol=0)
    assert any((heads["turned", "1"][k] - v).abs().max() > 1e-3 for k, v in heads["plain", "1"].items())
    # Mapping with the views the head was not trained on works, with a one-line warning saying so.
    head = tmp_path / "plain-8.safetensors"
    result = run_cli(capsys, "map", scenes[0], "--head", head, "--chip-size", str(CHIP), "-o", tmp_path / "m.gpkg")
    assert result.exit_code == 0, result.err
    assert "trained with --tta 8 and this run uses --tta 1" in result.err
    result = run_cli(
        capsys, "map", scenes[0], "--head", head, "--chip-size", str(CHIP), "--tta", "8", "-o", tmp_path / "m8.gpkg"
    )
    assert result.exit_code == 0 and "trained with --tta" not in result.err
