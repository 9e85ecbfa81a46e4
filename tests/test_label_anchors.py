"""Label anchoring: zero-shot labels outside the bundled model's trained phrasings lean on the nearest ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from geobimors.errors import InputError, ModelError
from geobimors.heads.checkpoint import FORMAT, load_head, read_metadata, save_head
from geobimors.heads.probe import TipAdapterHead
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models.anchors import AnchorSettings, sentence_embeddings
from geobimors.models.bundled import anchored_prompts
from geobimors.models.clip import load_model
from geobimors.models.mini.classes import HELD_OUT_PARAPHRASES, TRAIN_SYNONYMS, TRAINED_CONCEPTS
from geobimors.train.data import load_image_folder
from geobimors.train.embedding import embed_images

from cli_helpers import run_cli

# A Dynamic World-style legend: class -> the EuroSAT folders it covers (none: not in EuroSAT).
LEGEND = {
    "water": ["River", "SeaLake"], "trees": ["Forest"], "grass": ["Pasture", "HerbaceousVegetation"],
    "flooded vegetation": [], "crops": ["AnnualCrop", "PermanentCrop"], "shrub and scrub": ["HerbaceousVegetation"],
    "built area": ["Highway", "Industrial", "Residential"], "bare ground": [], "snow and ice": [],
}  # fmt: skip


@pytest.fixture(scope="module")
def mini_clip():  # type: ignore[no-untyped-def]
    return load_model("mini", device="cpu")


def heads(clip, texts: list[str]) -> tuple[ZeroShotHead, ZeroShotHead]:  # type: ignore[no-untyped-def]
    labels = [Label(t, t) for t in texts]
    return ZeroShotHead(clip, labels), ZeroShotHead(clip, labels, anchors=None)


def test_trained_phrasings_are_read_as_written(mini_clip) -> None:  # type: ignore[no-untyped-def]
    texts = ["forest", "Annual Crop Land", "dense residential area", "a plaza"]  # any case: MiniLM is uncased
    anchored, as_written = heads(mini_clip, texts)
    assert torch.equal(anchored.anchor_mix, torch.zeros(4))
    assert torch.equal(anchored.class_features, as_written.class_features)


def test_a_paraphrase_moves_toward_the_concept_it_means(mini_clip) -> None:  # type: ignore[no-untyped-def]
    anchored, as_written = heads(mini_clip, ["woodland", "manufacturing site"])
    assert (anchored.anchor_mix > 0.3).all()
    concepts, _ = heads(mini_clip, ["forest", "industrial buildings"])
    before = (as_written.class_features * concepts.class_features).sum(1)
    after = (anchored.class_features * concepts.class_features).sum(1)
    assert (after > before + 0.05).all(), (before, after)
    assert torch.allclose(anchored.class_features.norm(dim=1), torch.ones(2))


def test_the_further_a_label_from_every_concept_the_less_it_is_anchored(mini_clip) -> None:  # type: ignore[no-untyped-def]
    texts = ["quantum chromodynamics", "woodland"]
    vocabulary = sentence_embeddings(mini_clip, [p for group in TRAINED_CONCEPTS for p in group])
    best = (sentence_embeddings(mini_clip, texts) @ vocabulary.T).max(dim=1).values
    assert float(best[0]) < 0.4 < float(best[1])
    anchored, as_written = heads(mini_clip, texts)
    assert anchored.anchor_mix.tolist() == pytest.approx(best.tolist(), abs=1e-5)  # the default: mix = similarity
    moved = 1 - (anchored.class_features * as_written.class_features).sum(1)
    assert float(moved[0]) < float(moved[1])


def test_the_settings_shape_the_mix(mini_clip) -> None:  # type: ignore[no-untyped-def]
    labels = [Label("woodland", "woodland")]
    vocabulary = sentence_embeddings(mini_clip, [p for group in TRAINED_CONCEPTS for p in group])
    best = float((sentence_embeddings(mini_clip, ["woodland"]) @ vocabulary.T).max())
    assert 0.4 < best < 0.999  # near trained phrasings, but not one of them
    mixes = [
        float(ZeroShotHead(mini_clip, labels, anchors=AnchorSettings(strength=s, gate=g)).anchor_mix[0])
        for s, g in ((1.0, 0.0), (0.5, 0.0), (1.0, 0.4))
    ]
    assert mixes == pytest.approx([best, best / 2, (best - 0.4) / 0.6], abs=1e-5)


def test_models_without_a_trained_vocabulary_read_labels_as_written(tiny_model: str) -> None:
    clip = load_model(tiny_model, device="cpu")
    anchored, as_written = heads(clip, ["woodland", "built area"])
    assert torch.equal(anchored.anchor_mix, torch.zeros(2))
    assert torch.equal(anchored.class_features, as_written.class_features)


def test_a_land_cover_legend_reads_eurosat_better_anchored(mini_clip, eurosat: Path) -> None:  # type: ignore[no-untyped-def]
    """The behaviour anchoring is for, on real chips: a legend written unlike the training names."""
    data = load_image_folder(eurosat / "val", shots=20, seed=0)
    folders = sorted(TRAIN_SYNONYMS)  # class index order of the folder
    features = embed_images(mini_clip, data.images)
    right = np.array([[folder in covers for covers in LEGEND.values()] for folder in folders])
    scores = []
    for head in heads(mini_clip, list(LEGEND)):
        predicted = head.logits_from_embeddings(features).argmax(1).numpy()
        scores.append(float(right[data.targets, predicted].mean()))
    # Measured on these 200 chips: 0.825 anchored, 0.715 as written (paraphrases below: 0.580 and 0.505).
    assert scores[0] >= scores[1] + 0.05, scores
    paraphrased = [HELD_OUT_PARAPHRASES[f] for f in folders]
    accuracy = []
    for head in heads(mini_clip, paraphrased):
        accuracy.append(float((head.logits_from_embeddings(features).argmax(1).numpy() == data.targets).mean()))
    assert accuracy[0] > accuracy[1], accuracy


def test_embedding_heads_record_their_anchoring_and_old_checkpoints_keep_theirs(
    mini_clip,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    labels = [Label("woodland", "woodland"), Label("built area", "built area")]
    head = TipAdapterHead(mini_clip, labels)
    features = F.normalize(torch.randn(4, head.text_weights.shape[1]), dim=-1)
    head.set_cache(features, torch.tensor([0, 0, 1, 1]))
    path = save_head(head, tmp_path / "tip.safetensors")
    assert read_metadata(path)["config"]["anchors"] == {"strength": 1.0, "temperature": 0.1, "gate": 0.0, "top": 3}
    loaded = load_head(path, mini_clip)
    assert torch.allclose(loaded.text_weights, head.text_weights)

    # A checkpoint from before anchoring (no "anchors" in its config) keeps the text it was fitted with.
    tensors = load_file(str(path))
    old = read_metadata(path)
    del old["config"]["anchors"]
    old_path = tmp_path / "old.safetensors"
    save_file(tensors, str(old_path), metadata={FORMAT: json.dumps(old)})
    as_written = TipAdapterHead(mini_clip, labels, anchors=None)
    assert torch.allclose(load_head(old_path, mini_clip).text_weights, as_written.text_weights)
    assert not torch.allclose(as_written.text_weights, head.text_weights)

    old["config"]["anchors"] = "yes"
    bad_path = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad_path), metadata={FORMAT: json.dumps(old)})
    with pytest.raises(ModelError, match="does not fit its own metadata"):
        load_head(bad_path, mini_clip)


def test_the_map_summary_and_output_name_the_anchored_labels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[1] / "sample_data"
    labels = tmp_path / "legend.txt"
    labels.write_text("water\ntrees\nbuilt area\nForest\n")
    assert anchored_prompts("mini", ["water", "trees", "built area", "Forest"]) == ["water", "built area"]
    out = tmp_path / "map.gpkg"
    result = run_cli(capsys, "map", root / "L7_ETMs.tif", "--labels", labels, "--bands", "3,2,1", "-o", out)
    assert result.exit_code == 0, result.err
    summary = result.out + result.err
    assert "anchored labels: water, built area (not phrasings mini was trained on" in summary
    metadata = pyogrio.read_info(out, layer="chips")["layer_metadata"]
    assert metadata["anchored_labels"].startswith("water, built area")
    plain = tmp_path / "plain.txt"
    plain.write_text("sea or lake\nforest\n")
    plain_result = run_cli(
        capsys, "map", root / "L7_ETMs.tif", "--labels", plain, "--bands", "3,2,1", "-o", tmp_path / "plain.gpkg"
    )
    assert plain_result.exit_code == 0, plain_result.err
    assert "anchored" not in plain_result.out + plain_result.err


def test_evaluate_reports_the_anchored_labels(
    capsys: pytest.CaptureFixture[str], eurosat: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    names = {folder: synonyms[0] for folder, synonyms in TRAIN_SYNONYMS.items()} | {"Forest": "woodland"}
    labels.write_text("".join(f"{folder}: {name}\n" for folder, name in names.items()))
    report = tmp_path / "report.json"
    result = run_cli(
        capsys, "evaluate", eurosat / "val", "--labels", labels, "--limit-per-class", "2", "--json", report
    )
    assert result.exit_code == 0, result.err
    assert json.loads(report.read_text())["anchored_labels"] == ["woodland"]
    assert "anchored labels: woodland (" in result.out


def test_literal_labels_reads_every_label_as_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "sample_data"
    labels = tmp_path / "legend.txt"
    labels.write_text("water\ntrees\nbuilt area\n")
    scores = []
    for extra in ((), ("--literal-labels",)):
        out = tmp_path / f"map{len(extra)}.gpkg"
        result = run_cli(capsys, "map", root / "L7_ETMs.tif", "--labels", labels, "--bands", "3,2,1", "-o", out, *extra)
        assert result.exit_code == 0, result.err
        assert ("anchored labels:" in result.out + result.err) == (not extra)
        assert ("anchored_labels" in pyogrio.read_info(out, layer="chips")["layer_metadata"]) == (not extra)
        scores.append(pyogrio.read_dataframe(out, layer="chips", columns=["score"])["score"].to_numpy())
    assert not np.allclose(scores[0], scores[1])  # the anchored labels' class features differ


def test_literal_labels_with_a_head_is_refused(
    capsys: pytest.CaptureFixture[str],
    mini_clip,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from geobimors.heads.checkpoint import save_head
    from geobimors.xarray import classify

    head = TipAdapterHead(mini_clip, [Label("forest", "forest"), Label("sea or lake", "sea or lake")])
    path = save_head(head, tmp_path / "tip.safetensors")
    root = Path(__file__).resolve().parents[1] / "sample_data"
    for args in (
        ("map", root / "L7_ETMs.tif", "--head", path, "--bands", "3,2,1", "-o", tmp_path / "m.gpkg"),
        ("evaluate", root, "--head", path),
    ):
        result = run_cli(capsys, *args, "--literal-labels")
        assert result.exit_code == 2, result.err
        assert result.err.startswith("Error: --literal-labels is for zero-shot") and result.err.count("\n") == 1
    with pytest.raises(InputError, match="--literal-labels is for zero-shot"):
        classify(None, head=str(path), literal_labels=True)  # type: ignore[arg-type]
