"""geobimors train / evaluate / caption / map --head through the CLI, with tiny local models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from geobimors.heads.checkpoint import read_metadata

from cli_helpers import assert_one_line_error, run_cli
from rasters import make_geotiff


def test_train_evaluate_and_map_with_a_head(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tiny_blip2: str, small_eurosat: Path, tmp_path: Path
) -> None:
    head = tmp_path / "head.safetensors"
    result = run_cli(
        capsys,
        "train",
        small_eurosat,
        "-m",
        tiny_model,
        "--head",
        "bimors",
        "--shots",
        "4",
        "--epochs",
        "2",
        "--captioner",
        tiny_blip2,
        "--max-new-tokens",
        "4",
        "--num-beams",
        "1",
        "--val-shots",
        "2",
        "-o",
        head,
    )
    assert result.exit_code == 0, result.err
    assert "learnable parameters:" in result.out and "best epoch:" in result.out
    assert "epoch=1" in result.err and "val_accuracy=" in result.err
    meta = read_metadata(head)
    assert meta["head"] == "bimors" and meta["config"]["captioner"]["name"] == tiny_blip2
    assert [label["name"] for label in meta["labels"]] == [
        "annual crop land",
        "forest",
        "residential buildings",
        "sea or lake",
    ]
    assert meta["training"]["shots"] == 4 and meta["training"]["settings"]["lr"] == 0.009
    assert 1 <= meta["training"]["result"]["best_epoch"] <= 2

    report = tmp_path / "report.json"
    confusion = tmp_path / "confusion.csv"
    result = run_cli(
        capsys,
        "evaluate",
        small_eurosat,
        "--head",
        head,
        "--json",
        report,
        "--confusion",
        confusion,
        "--protocol",
        "base-to-new",
    )
    assert result.exit_code == 0, result.err
    data = json.loads(report.read_text())
    assert data["n"] == 16
    # Detail views blend pooled features; BiMoRS reads visual tokens, so it is refused by name.
    result = run_cli(capsys, "evaluate", small_eurosat, "--head", head, "--views", "6")
    assert_one_line_error(result, 2, "which the bimors head does not classify from")
    assert set(data["base_to_new"]) >= {"base", "new", "harmonic_mean"}
    assert data["base_to_new"]["base_classes"] == ["annual crop land", "forest"]
    rows = list(csv.reader(confusion.open()))
    assert rows[0][1:] == ["annual crop land", "forest", "residential buildings", "sea or lake"]
    counts = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert [row[0] for row in rows[1:]] == rows[0][1:]
    assert counts.sum(axis=1).tolist() == [4, 4, 4, 4]  # rows: the true classes, 4 validation images each
    assert data["confusion_matrix"]["counts"] == counts.tolist()
    # The accuracies are the confusion matrix's: overall and per class.
    assert data["accuracy"] == pytest.approx(np.trace(counts) / 16)
    assert list(data["per_class_accuracy"].values()) == pytest.approx((np.diag(counts) / 4).tolist())

    # The head maps a scene; chips get captions from the head's captioner.
    scene = make_geotiff(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 256, (3, 64, 64), np.uint8))
    out = tmp_path / "map.gpkg"
    result = run_cli(capsys, "map", scene, "--head", head, "--chip-size", "32", "-o", out)
    assert result.exit_code == 0, result.err
    chips = gpd.read_file(out, layer="chips")
    assert len(chips) == 4 and chips["caption"].map(lambda c: isinstance(c, str)).all()
    assert set(chips["label"]) <= {"annual crop land", "forest", "residential buildings", "sea or lake"}
    assert (chips["head"] == "head.safetensors").all()
    # --captions with another captioner than the one the head reads is refused before any work;
    # naming the head's own captioner is the same run.
    other = tmp_path / "other.gpkg"
    assert_one_line_error(
        run_cli(capsys, "map", scene, "--head", head, "--chip-size", "32", "--captions", "mini", "-o", other),
        2,
        f"the head reads captions by {tiny_blip2}",
    )
    assert not other.exists()
    # Detail views blend pooled features, which BiMoRS does not classify from.
    assert_one_line_error(
        run_cli(capsys, "map", scene, "--head", head, "--chip-size", "32", "--views", "6", "-o", other),
        2,
        "which the bimors head does not classify from",
    )
    assert not other.exists()
    same = run_cli(capsys, "map", scene, "--head", head, "--chip-size", "32", "--captions", tiny_blip2, "-o", other)
    assert same.exit_code == 0, same.err


@pytest.mark.parametrize("kind", ["coop", "cocoop"])
def test_train_baselines_and_zero_shot_evaluation(
    capsys: pytest.CaptureFixture[str], kind: str, tiny_model: str, small_eurosat: Path, tmp_path: Path
) -> None:
    head = tmp_path / f"{kind}.safetensors"
    result = run_cli(
        capsys,
        "train",
        small_eurosat,
        "-m",
        tiny_model,
        "--head",
        kind,
        "--shots",
        "2",
        "--epochs",
        "1",
        "--classes",
        "base",
        "-o",
        head,
        "-q",
    )
    assert result.exit_code == 0, result.err
    assert [label["name"] for label in read_metadata(head)["labels"]] == ["annual crop land", "forest"]
    # New classes at evaluation: the learned context goes with any class names.
    result = run_cli(capsys, "evaluate", small_eurosat / "val", "--head", head)
    assert result.exit_code == 0 and "sea or lake" in result.out
    result = run_cli(capsys, "evaluate", small_eurosat, "-m", tiny_model, "--zero-shot", "--limit-per-class", "2")
    assert result.exit_code == 0 and "on 8 images" in result.out


def test_caption_command(
    capsys: pytest.CaptureFixture[str], tiny_blip: str, small_eurosat: Path, tmp_path: Path
) -> None:
    out = tmp_path / "captions.csv"
    args = ["caption", small_eurosat / "val", "--captioner", tiny_blip, "--num-beams", "1", "--max-new-tokens", "3"]
    result = run_cli(capsys, *args, "-o", out)
    assert result.exit_code == 0, result.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and all(r["caption"] for r in rows)
    result = run_cli(capsys, *args)
    assert "captions: 16 (16 already cached)" in result.out
    scene = make_geotiff(tmp_path / "scene.tif", np.random.default_rng(1).integers(0, 256, (3, 64, 64), np.uint8))
    result = run_cli(
        capsys,
        "caption",
        scene,
        "--captioner",
        tiny_blip,
        "--num-beams",
        "1",
        "--max-new-tokens",
        "3",
        "--chip-size",
        "32",
        "--gsd",
        "scene",
    )
    assert result.exit_code == 0 and "captions: 4 (0 already cached)" in result.out


def test_train_and_map_errors(
    capsys: pytest.CaptureFixture[str], tiny_model: str, small_eurosat: Path, tmp_path: Path, rgb_scene: Path
) -> None:
    result = run_cli(capsys, "train", tmp_path / "nothing", "-m", tiny_model, "-o", tmp_path / "h.st")
    assert_one_line_error(result, 2, "image folder not found")
    assert_one_line_error(
        run_cli(capsys, "train", small_eurosat, "-m", tiny_model, "--shots", "50", "-o", tmp_path / "h.st"),
        2,
        "fewer than --shots 50",
    )
    assert_one_line_error(
        run_cli(
            capsys,
            "train",
            small_eurosat,
            "-m",
            tiny_model,
            "--shots",
            "2",
            "--head",
            "bimors",
            "--captioner",
            "no/such-model",
            "-o",
            tmp_path / "h.st",
        ),
        2,
        "could not",
    )
    assert_one_line_error(
        run_cli(capsys, "map", rgb_scene, "--head", tmp_path / "missing.safetensors"), 2, "head checkpoint not found"
    )
    assert_one_line_error(run_cli(capsys, "map", rgb_scene), 2, "--labels")
    assert not list(tmp_path.glob("*.st"))
