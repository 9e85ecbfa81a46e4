import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from geobimors.errors import InputError
from geobimors.models.views import view_crops
from geobimors.train.retrieval import aggregate_views, evaluate_retrieval, load_caption_set, retrieval_recalls

from cli_helpers import assert_one_line_error, run_cli
from tiny_captioners import BrightnessCaptioner


def test_perfect_similarity_scores_100():
    # 3 images x 2 captions; every caption closest to its own image
    text_image = np.array([0, 0, 1, 1, 2, 2])
    similarity = np.where(np.arange(3)[:, None] == text_image[None, :], 1.0, 0.0)
    recalls = retrieval_recalls(similarity, text_image, ks=(1, 2))
    assert recalls == {"i2t_R@1": 100.0, "i2t_R@2": 100.0, "t2i_R@1": 100.0, "t2i_R@2": 100.0, "mR": 100.0}


def test_ranks_counted_by_hand():
    # image 0's captions (0, 1) rank 2nd and 4th behind caption 2; image 1's caption 2 is first
    text_image = np.array([0, 0, 1, 1])
    similarity = np.array(
        [
            [0.8, 0.5, 0.9, 0.6],  # i2t: best own 0.8 has 1 wrong above -> rank 1 (0-based): miss@1, hit@2
            [0.1, 0.2, 0.7, 0.3],  # best own 0.7 first -> hit@1
        ]
    )
    r = retrieval_recalls(similarity, text_image, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(50.0)
    assert r["i2t_R@2"] == pytest.approx(100.0)
    # t2i: caption 0 -> image 0 first; 1 -> image 0 (0.5 > 0.2) first; 2 -> image 1 (0.7) second to 0.9: miss@1;
    # 3 -> image 1 (0.3) second to 0.6: miss@1
    assert r["t2i_R@1"] == pytest.approx(50.0)
    assert r["t2i_R@2"] == pytest.approx(100.0)
    assert r["mR"] == pytest.approx(np.mean([50, 100, 50, 100]))


def test_ties_score_chance_not_everything():
    # a model that embeds everything identically must score chance, not 100
    n_images, per_image = 10, 5
    text_image = np.repeat(np.arange(n_images), per_image)
    similarity = np.zeros((n_images, n_images * per_image))
    r = retrieval_recalls(similarity, text_image, ks=(1, 5))
    assert r["t2i_R@1"] == pytest.approx(100.0 / n_images)
    assert r["t2i_R@5"] == pytest.approx(500.0 / n_images)
    # i2t: 5 own among 50 tied: P(first of 5 owns within the top 1) = 5/50
    assert r["i2t_R@1"] == pytest.approx(100.0 * per_image / (n_images * per_image))
    # top 5: 1 - P(no own in the first 5) = 1 - C(45,5)/C(50,5)
    from math import comb

    assert r["i2t_R@5"] == pytest.approx(100.0 * (1 - comb(45, 5) / comb(50, 5)))


def test_duplicate_caption_ties_split_the_hit():
    # the same caption text under two images: the own one ties with the other image's copy
    text_image = np.array([0, 1])
    similarity = np.array([[0.9, 0.9], [0.1, 0.2]])
    r = retrieval_recalls(similarity, text_image, ks=(1,))
    assert r["i2t_R@1"] == pytest.approx(75.0)  # image 0: half a hit; image 1: 0.2 > 0.1, a hit


def _caption_set(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        split = "test" if i % 2 == 0 else "train"
        lines.append(json.dumps({"image": f"img/{i}.png", "split": split, "captions": [f"scene {i}", "", "a place"]}))
    out = root / "captions.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_load_jsonl_split_and_empty_captions(tmp_path: Path):
    data = load_caption_set(_caption_set(tmp_path), "test")
    assert [p.name for p in data.images] == ["0.png", "2.png"]
    assert data.captions == [["scene 0", "a place"], ["scene 2", "a place"]]
    assert data.text_image.tolist() == [0, 0, 1, 1]


def test_load_karpathy_dataset_json(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "b.jpg")
    dataset = {
        "images": [
            {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a river", "tokens": ["a", "river"]}]},
            {"filename": "b.jpg", "split": "val", "sentences": [{"tokens": ["a", "road"]}]},
        ]
    }
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    data = load_caption_set(tmp_path / "dataset.json", "val", images_root=tmp_path / "imgs")
    assert data.captions == [["a road"]]
    with pytest.raises(InputError, match=r"missing.*--images"):
        load_caption_set(tmp_path / "dataset.json", "test")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json at all\n", "line 1: not a caption record"),
        ('{"image": "x.png", "split": "test", "captions": "one"}\n', "must be a list"),
        ('{"image": "x.png", "split": "train", "captions": ["a"]}\n', "no images in split 'test'; its splits: train"),
    ],
)
def test_bad_caption_files(tmp_path: Path, content: str, fragment: str):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(fragment)):
        load_caption_set(path)


def test_caption_file_must_be_a_regular_file(tmp_path: Path):
    with pytest.raises(InputError, match="not a regular file"):
        load_caption_set(tmp_path)


def test_cli_retrieval_report(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]):
    captions = _caption_set(tmp_path, 6)
    report = tmp_path / "r.json"
    result = run_cli(capsys, "evaluate", captions, "--model", tiny_model, "--device", "cpu", "--json", report)
    assert result.exit_code == 0, result.err
    assert "image->text" in result.out and "mR" in result.out
    data = json.loads(report.read_text())
    assert (data["task"], data["n_images"], data["n_captions"]) == ("retrieval", 3, 6)
    recalls = [data[f"{w}_R@{k}"] for w in ("i2t", "t2i") for k in (1, 5, 10)]
    assert data["mR"] == pytest.approx(np.mean(recalls))
    # with 3 images and 6 captions every image finds one of its captions within the top 5
    assert data["t2i_R@5"] == 100.0 and data["i2t_R@5"] == 100.0


def test_cli_retrieval_refuses_a_head_and_a_bad_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    captions = _caption_set(tmp_path)
    result = run_cli(capsys, "evaluate", captions, "--head", tmp_path / "h.safetensors")
    assert_one_line_error(result, 2, "drop --head")
    result = run_cli(capsys, "evaluate", captions, "--split", "dev")
    assert_one_line_error(result, 2, "no images in split 'dev'")


# --------------------------------------------------------------- multi-perspective views (MPS-CLIP)

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class ColourClip:
    """A stand-in CLIP that sees colour: an image's feature is the share of its pixels of each colour
    (and of black), a text's feature the one-hot of the colour it names. Images keep their pixel size
    through ``preprocess``, so a sub-view is seen as exactly its own pixels."""

    name = "colour"
    fingerprint = "colour"

    def preprocess(self, chips: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(chips))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.reshape(len(images), -1, 3)
        shares = [(pixels == torch.tensor(c, dtype=pixels.dtype)).all(-1).float().mean(1) for c in COLOURS.values()]
        black = (pixels == 0).all(-1).float().mean(1)
        return torch.nn.functional.normalize(torch.stack([*shares, black], dim=1), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        names = list(COLOURS)
        return torch.stack([torch.eye(len(names) + 1)[names.index(t.split()[-1])] for t in texts])


def _quadrant_images(root: Path) -> Path:
    """Image i: its colour fills one quadrant (a different one for each image); the next image's colour
    covers half of the other three quadrants (a checkerboard), so it is the full view's larger colour."""
    names = list(COLOURS)
    lines = []
    for i, name in enumerate(names):
        image = np.zeros((32, 32, 3), np.uint8)
        checker = (np.indices((32, 32)).sum(0) % 2 == 0)[..., None]
        image[:] = np.where(checker, COLOURS[names[(i + 1) % len(names)]], 0)
        r, c = divmod(i, 2)
        image[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = COLOURS[name]
        Image.fromarray(image).save(root / f"{name}.png")
        lines.append(json.dumps({"image": f"{name}.png", "split": "test", "captions": [f"a {name}"]}))
    (root / "c.jsonl").write_text("\n".join(lines) + "\n")
    return root / "c.jsonl"


def test_view_crops_are_the_quadrants_and_the_centre():
    chips = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    full, tl, tr, bl, br, centre = view_crops(chips, 6)
    assert (full == chips).all()
    assert (tl == chips[:, :4, :4]).all() and (tr == chips[:, :4, 4:]).all()
    assert (bl == chips[:, 4:, :4]).all() and (br == chips[:, 4:, 4:]).all()
    assert (centre == chips[:, 2:6, 2:6]).all()
    assert len(view_crops(chips, 5)) == 5 and len(view_crops(chips, 1)) == 1


def test_aggregate_views_max_response_and_blend_by_hand():
    # one image, views: full, 2 sub-views; two texts
    similarity = np.array([[[0.2, 0.5], [0.9, 0.1], [0.3, 0.4]]])
    np.testing.assert_allclose(aggregate_views(similarity), [[0.9, 0.5]])
    np.testing.assert_allclose(aggregate_views(similarity, 0.25), [[0.75 * 0.2 + 0.25 * 0.9, 0.75 * 0.5 + 0.25 * 0.4]])
    np.testing.assert_allclose(aggregate_views(similarity, 0.0), similarity[:, 0])
    np.testing.assert_allclose(aggregate_views(similarity[:, :1]), similarity[:, 0])


def test_views_find_a_match_that_fills_one_quadrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import geobimors.models.clip

    monkeypatch.setattr(geobimors.models.clip, "load_model", lambda *a, **k: ColourClip())
    captions = _quadrant_images(tmp_path)
    plain = evaluate_retrieval(captions, "colour", views=1)
    views = evaluate_retrieval(captions, "colour", views=5)
    # the full view sees more of the next image's colour than of its own: every first hit is wrong
    assert plain["i2t_R@1"] == 0.0 and plain["t2i_R@1"] == 0.0
    # the quadrant filled with its own colour matches its text exactly: every first hit is right
    assert views["i2t_R@1"] == 100.0 and views["t2i_R@1"] == 100.0
    assert views["views"] == 5 and views["view_aggregation"] == "max"
    # blended with weight 0 the sub-views count for nothing: the plain figures
    blended = evaluate_retrieval(captions, "colour", views=5, view_blend=0.0)
    assert blended["mR"] == plain["mR"] and blended["view_aggregation"] == "blend 0.0"


def _cli_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, captions: Path, model: str, runs: dict[str, list[str]]
) -> tuple[dict[str, Any], str]:
    """``geobimors evaluate`` once per named option list: the JSON reports and the last run's stdout."""
    reports, out_text = {}, ""
    for name, options in runs.items():
        out = tmp_path / f"{name}.json"
        result = run_cli(capsys, "evaluate", captions, "--model", model, "--device", "cpu", "--json", out, *options)
        assert result.exit_code == 0, result.err
        reports[name], out_text = json.loads(out.read_text()), result.out
    return reports, out_text


def test_cli_views_with_a_real_model(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]):
    captions = _caption_set(tmp_path, 12)
    runs = {"plain": [], "views": ["--views", "6"], "blend0": ["--views", "5", "--view-blend", "0"]}
    reports, last_out = _cli_reports(capsys, tmp_path, captions, tiny_model, runs)
    assert "5 views (blend 0.0)" in last_out
    keys = [f"{w}_R@{k}" for w in ("i2t", "t2i") for k in (1, 5, 10)]
    assert [reports["blend0"][k] for k in keys] == [reports["plain"][k] for k in keys]
    assert reports["views"]["views"] == 6


# --------------------------------------------------------------- keyword guidance from captions


def _grey_levels(root: Path, captioner: BrightnessCaptioner) -> Path:
    """One flat grey image per word; its captions say what the brightness captioner will say of it."""
    lines = []
    for level, word in enumerate(captioner.words):
        Image.new("RGB", (32, 32), (captioner.level_value(level),) * 3).save(root / f"{word}.png")
        lines.append(
            json.dumps({"image": f"{word}.png", "split": "test", "captions": [f"an aerial view of {word}", "a place"]})
        )
    (root / "c.jsonl").write_text("\n".join(lines) + "\n")
    return root / "c.jsonl"


def test_caption_guidance_ranks_by_the_captions(tmp_path: Path, blind_tiny_model: str, monkeypatch: pytest.MonkeyPatch):
    import geobimors.train.retrieval as retrieval

    captioner = BrightnessCaptioner(["forest", "river", "field", "road", "city", "lake"])
    monkeypatch.setattr(retrieval, "load_retrieval_captioner", lambda *a, **k: captioner)
    captions = _grey_levels(tmp_path, captioner)
    plain = evaluate_retrieval(captions, blind_tiny_model, device="cpu")
    off = evaluate_retrieval(captions, blind_tiny_model, device="cpu", caption_guidance=0.0)
    full = evaluate_retrieval(captions, blind_tiny_model, device="cpu", caption_guidance=1.0)
    assert captioner.calls > 0
    # weight 0 changes nothing (the captions are made and blended in, with no weight)
    keys = [f"{w}_R@{k}" for w in ("i2t", "t2i") for k in (1, 5, 10)]
    assert [off[k] for k in keys] == [plain[k] for k in keys]
    # each image's caption is word for word one of its own texts: the first image->text hit is always right,
    # which the blind image tower (every image the same features, up to rounding) never gets
    assert full["i2t_R@1"] == 100.0
    assert plain["i2t_R@1"] < 100.0 and plain["mR"] < full["mR"]
    # and each caption that names an image finds it first (half of the captions; "a place" is under every image)
    assert full["t2i_R@1"] >= 50.0
    assert full["caption_guidance"] == 1.0 and full["examples"][0]["generated"] == "an aerial view of forest"


def test_cli_caption_guidance_zero_equals_plain_with_the_bundled_captioner(
    tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]
):
    captions = _caption_set(tmp_path, 6)
    runs = {"plain": [], "guided0": ["--caption-guidance", "0"], "guided": ["--caption-guidance", "0.5"]}
    reports, last_out = _cli_reports(capsys, tmp_path, captions, tiny_model, runs)
    assert "caption guidance 0.5 (mini)" in last_out
    keys = [f"{w}_R@{k}" for w in ("i2t", "t2i") for k in (1, 5, 10)]
    assert [reports["guided0"][k] for k in keys] == [reports["plain"][k] for k in keys]
    assert reports["guided"]["captioner"] == "mini"
    assert all(e["generated"].strip() for e in reports["guided"]["examples"])  # the bundled captioner wrote them


# the bad values of the retrieval options; each is listed in docs/errors.md
RETRIEVAL_OPTION_ERRORS = {
    "--views not 1, 5 or 6": (["--views", "3"], "--views must be 1 (the full image), 5"),
    "--view-blend outside 0..1": (
        ["--views", "5", "--view-blend", "1.5"],
        "--view-blend must be a weight between 0 and 1",
    ),
    "--view-blend without sub-views": (["--view-blend", "0.5"], "pass --views 5 or 6 with it"),
    "--caption-guidance outside 0..1": (["--caption-guidance", "-0.1"], "--caption-guidance must be a weight between"),
    "--caption-guidance NaN": (["--caption-guidance", "nan"], "not a finite number"),
    "--caption-guidance with --captioner none": (["--caption-guidance", "0.3", "--captioner", "none"], "not 'none'"),
    "caption guidance on a classification task": (
        ["--task", "classification", "--caption-guidance", "0.3"],
        "--caption-guidance applies to --task retrieval only",
    ),
    "--views with --task captioning": (["--task", "captioning", "--views", "5"], "drop them with --task captioning"),
}


@pytest.mark.parametrize("case", list(RETRIEVAL_OPTION_ERRORS))
def test_bad_retrieval_options_are_one_line_errors(
    case: str, tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]
):
    options, fragment = RETRIEVAL_OPTION_ERRORS[case]
    captions = _caption_set(tmp_path)
    out = tmp_path / "r.json"
    result = run_cli(capsys, "evaluate", captions, "--model", tiny_model, "--device", "cpu", "--json", out, *options)
    assert_one_line_error(result, 2, fragment)
    assert not out.exists()


def test_retrieval_option_errors_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    missing = [name for name in RETRIEVAL_OPTION_ERRORS if f"| {name} |" not in text]
    assert not missing, missing
