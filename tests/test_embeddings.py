"""geobimors embed, map --embeddings and map --from-embeddings against real map runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch

import geobimors
from geobimors.embeddings.store import open_store
from geobimors.heads.base import works_from_embeddings
from geobimors.heads.checkpoint import build_head, save_head
from geobimors.labels import Label
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import load_model
from geobimors.run.store import RunLock

from cli_helpers import assert_one_line_error, run_cli, run_command_in_process, throttled
from conftest import SHARED_DATA
from rasters import make_geotiff, random_rgb
from tiny_models import make_tiny_clip_dir

LABEL_COLUMNS = ["label", "score", "label_2", "score_2", "label_3", "score_3", "label_4", "score_4"]


def _labels(tmp: Path) -> Path:
    path = tmp / "labels.txt"
    path.write_text("forest\nwater: a lake or the sea\nfields\nbuildings\n")
    return path


def _chips(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="chips").sort_values(["row", "col"]).reset_index(drop=True)


def _assert_same_chips(mapped: gpd.GeoDataFrame, relabelled: gpd.GeoDataFrame, score_tol: float) -> None:
    assert list(relabelled.columns) == list(mapped.columns)
    assert len(mapped) == len(relabelled) > 0
    for column in mapped.columns:
        if column.startswith("score"):
            np.testing.assert_allclose(relabelled[column], mapped[column], atol=score_tol, rtol=0)
        elif column != "geometry":
            assert relabelled[column].tolist() == mapped[column].tolist(), column
    assert relabelled.geometry.geom_equals_exact(mapped.geometry, tolerance=0).all()


def test_map_from_float32_embeddings_equals_a_full_map_run(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, tmp_path: Path
) -> None:
    labels = _labels(tmp_path)
    chip = ["-m", tiny_model, "--chip-size", "16", "--progress", "none"]
    embedded = run_cli(capsys, "embed", rgb_scene, *chip, "--dtype", "float32", "-o", tmp_path / "scene.parquet")
    assert embedded.exit_code == 0, embedded.err
    assert "48 embedded" in embedded.out and "bytes per chip" in embedded.out
    mapped = run_cli(
        capsys, "map", rgb_scene, "-l", labels, *chip, "--top-k", "4", "-o", tmp_path / "map.gpkg",
        "--embeddings", tmp_path / "by-product.parquet", "--embeddings-dtype", "float32",
    )  # fmt: skip
    assert mapped.exit_code == 0, mapped.err
    # The by-product of one map pass is the very file `embed` writes.
    assert (tmp_path / "by-product.parquet").read_bytes() == (tmp_path / "scene.parquet").read_bytes()
    relabelled = run_cli(
        capsys, "map", "--from-embeddings", tmp_path / "scene.parquet", "-l", labels, "--top-k", "4",
        "-o", tmp_path / "relabel.gpkg", "--progress", "none",
    )  # fmt: skip
    assert relabelled.exit_code == 0, relabelled.err
    assert "no pixels read" in relabelled.out
    _assert_same_chips(_chips(tmp_path / "map.gpkg"), _chips(tmp_path / "relabel.gpkg"), 1e-4)
    # The Python API gives the same chips.
    frame = geobimors.classify_embeddings(tmp_path / "scene.parquet", labels, top_k=4)
    frame = frame.sort_values(["row", "col"]).reset_index(drop=True)
    np.testing.assert_allclose(frame["score"], _chips(tmp_path / "map.gpkg")["score"], atol=1e-4)
    assert frame.crs == gpd.read_file(tmp_path / "map.gpkg", layer="chips").crs


def test_trained_head_from_embeddings_and_heads_that_need_pixels(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, tmp_path: Path
) -> None:
    clip = load_model(tiny_model, device="cpu")
    labels = [Label(n, n) for n in ("forest", "water", "fields", "buildings")]
    paths = {}
    for kind in ("coop", "cocoop", "bimors"):
        head = build_head(kind, clip, labels, captioner=CaptionerSpec("none"))
        torch.manual_seed(1)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        paths[kind] = save_head(head, tmp_path / f"{kind}.safetensors")
        assert works_from_embeddings(head) == (kind != "bimors")
    store = tmp_path / "scene.parquet"
    chip = ["-m", tiny_model, "--chip-size", "16", "--progress", "none"]
    assert run_cli(capsys, "embed", rgb_scene, *chip, "--dtype", "float32", "-o", store).exit_code == 0
    for kind in ("coop", "cocoop"):
        out_map, out_relabel = tmp_path / f"{kind}-map.gpkg", tmp_path / f"{kind}-relabel.gpkg"
        assert run_cli(capsys, "map", rgb_scene, "--head", paths[kind], *chip, "-o", out_map).exit_code == 0
        result = run_cli(capsys, "map", "--from-embeddings", store, "--head", paths[kind], "-o", out_relabel)
        assert result.exit_code == 0, result.err
        _assert_same_chips(_chips(out_map), _chips(out_relabel), 1e-4)
    refused = run_cli(capsys, "map", "--from-embeddings", store, "--head", paths["bimors"], "-o", tmp_path / "b.gpkg")
    assert_one_line_error(refused, 2, "bimors head needs the visual tokens", "run geobimors map on the scene")
    assert not (tmp_path / "b.gpkg").exists()


def test_float16_store_agrees_with_map_on_a_real_scene(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The bundled mini model on a real aerial photo: top-1 of a float16 store vs the map pass."""
    scene = SHARED_DATA / "scenes" / "cogeo.tif"
    if not scene.exists():
        pytest.skip("../shared/data/scenes/cogeo.tif is not available")
    from geobimors.models.mini.classes import PLAIN_CLASS_NAMES

    labels = tmp_path / "eurosat.txt"
    labels.write_text("\n".join(PLAIN_CLASS_NAMES) + "\n")
    chip = ["--chip-size", "32", "--gsd", "scene", "--progress", "none"]
    mapped = run_cli(
        capsys, "map", scene, "-l", labels, *chip, "-o", tmp_path / "map.gpkg", "--embeddings", tmp_path / "s.parquet"
    )
    assert mapped.exit_code == 0, mapped.err
    assert open_store(tmp_path / "s.parquet").meta.dtype == "float16"
    relabelled = run_cli(
        capsys, "map", "--from-embeddings", tmp_path / "s.parquet", "-l", labels, "-o", tmp_path / "r.gpkg"
    )
    assert relabelled.exit_code == 0, relabelled.err
    a, b = _chips(tmp_path / "map.gpkg"), _chips(tmp_path / "r.gpkg")
    assert len(a) == len(b) == 32 * 32
    assert len(set(a["label"])) >= 3  # a real, mixed scene: the check is not trivial
    agreement = float((a["label"] == b["label"]).mean())
    assert agreement >= 0.995, agreement
    assert np.abs(a["score"] - b["score"]).max() < 0.02


@pytest.mark.slow
def test_embed_resumes_after_kill_9_to_an_identical_file(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    source = make_geotiff(tmp_path / "big.tif", random_rgb(128, 128, seed=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "geobimors.cli", "embed", str(source), "-m", tiny_model,
                "--chip-size", "8", "--batch-size", "16", "-o", str(out), "--progress", "none", "-q"]  # fmt: skip

    clean = tmp_path / "clean.parquet"
    assert run_command_in_process(capsys, command(clean)).exit_code == 0
    out = tmp_path / "killed.parquet"
    # Reads after the third batch wait 10 s: the run is killed with 3 or 4 of 16 batches stored.
    proc = subprocess.Popen(throttled(command(out), fast=3, delay=10), env=env, stderr=subprocess.PIPE, text=True)
    parts = Path(str(out) + ".partial")
    deadline = time.monotonic() + 120
    while len(list(parts.glob("embeddings-*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists() and parts.is_dir()
    with pytest.raises(geobimors.errors.InputError, match="not finished"):
        open_store(out)
    done = subprocess.run(command(out), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not parts.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.suffix == ".lock"]
    assert out.read_bytes() == clean.read_bytes()
    assert open_store(out).n_rows == 16 * 16


def test_embed_python_api_with_captions(tiny_model: str, tiny_blip: str, rgb_scene: Path, tmp_path: Path) -> None:
    summary = geobimors.embed(
        rgb_scene, tmp_path / "c.parquet", model=tiny_model, chip_size="32", captions=tiny_blip, progress="none"
    )
    assert summary.n_embedded == 12
    store = open_store(tmp_path / "c.parquet")
    assert store.meta.captioner == tiny_blip and store.meta.caption_model == "minilm"
    batch = next(store.iter_batches(["caption", "caption_embedding"]))
    assert all(isinstance(c, str) for c in batch.column("caption").to_pylist())
    assert store.embeddings_of(batch, "caption_embedding").shape == (12, 384)
    frame = store.to_geodataframe(["chip_id", "caption"])
    assert frame.crs == "EPSG:32632" and frame["caption"].notna().all()


def test_bad_input(capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    store = tmp_path / "scene.parquet"
    chip = ["-m", tiny_model, "--chip-size", "16", "--progress", "none"]
    assert run_cli(capsys, "embed", rgb_scene, *chip, "-o", store).exit_code == 0
    before = store.read_bytes()
    # Existing output without --overwrite, before any work.
    again = run_cli(capsys, "embed", rgb_scene, *chip, "-o", store)
    assert_one_line_error(again, 2, "already exists", "--overwrite")
    assert store.read_bytes() == before
    # A store made by another model: the message names both.
    other = str(make_tiny_clip_dir(tmp_path / "other-clip", seed=1))
    wrong = run_cli(capsys, "map", "--from-embeddings", store, "-l", labels, "-m", other, "-o", tmp_path / "o.gpkg")
    assert_one_line_error(wrong, 2, f"made with model {tiny_model}", f"not {other}")
    # Pixel options and a scene do not apply to a store.
    assert_one_line_error(
        run_cli(
            capsys, "map", "--from-embeddings", store, "-l", labels, "--chip-size", "32", "-o", tmp_path / "o.gpkg"
        ),
        2,
        "--chip-size does not apply with --from-embeddings",
    )
    assert_one_line_error(
        run_cli(capsys, "map", rgb_scene, "--from-embeddings", store, "-l", labels, "-o", tmp_path / "o.gpkg"),
        2,
        "drop scene",
    )
    # Truncated and non-GeoParquet files.
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(before[: len(before) // 2])
    assert_one_line_error(
        run_cli(capsys, "map", "--from-embeddings", truncated, "-l", labels, "-o", tmp_path / "o.gpkg"), 2, "truncated"
    )
    plain = tmp_path / "plain.parquet"
    gpd.GeoDataFrame({"a": [1]}, geometry=gpd.points_from_xy([0], [0]), crs=4326).to_parquet(plain)
    assert_one_line_error(
        run_cli(capsys, "map", "--from-embeddings", plain, "-l", labels, "-o", tmp_path / "o.gpkg"),
        2,
        "not a geobimors embeddings store",
    )
    # A store still being written.
    with RunLock(store):
        busy = run_cli(capsys, "map", "--from-embeddings", store, "-l", labels, "-o", tmp_path / "o.gpkg")
    assert_one_line_error(busy, 2, "still being written")
    # A model that cannot load: nothing is left behind.
    bad = run_cli(capsys, "embed", rgb_scene, "-m", str(tmp_path / "no-model"), "-o", tmp_path / "bad.parquet")
    assert bad.exit_code == 2 and "Traceback" not in bad.err
    assert not (tmp_path / "o.gpkg").exists()
    captioner = run_cli(
        capsys, "embed", rgb_scene, *chip, "--captions", tmp_path / "no-captioner", "-o", tmp_path / "bad.parquet"
    )
    assert captioner.exit_code == 2 and "Traceback" not in captioner.err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad.parquet") or p.name.startswith(".bad")]
    # map --embeddings refuses an existing store before any work.
    refused = run_cli(capsys, "map", rgb_scene, "-l", labels, *chip, "-o", tmp_path / "m.gpkg", "--embeddings", store)
    assert_one_line_error(refused, 2, "already exists")
    assert not (tmp_path / "m.gpkg").exists() and store.read_bytes() == before


def test_embed_of_one_scene_bounds_workers_as_the_many_scene_path_does(
    capsys: pytest.CaptureFixture[str], tiny_model: str, rgb_scene: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.parquet"
    for workers, fragment in (("0", "--workers must be at least 1"), ("100000", "--workers 100000 is far more")):
        result = run_cli(capsys, "embed", str(rgb_scene), "-m", tiny_model, "--workers", workers, "-o", str(out))
        assert_one_line_error(result, 2, fragment)
        assert not out.exists() and not (tmp_path / "s.parquet.partial").exists()
