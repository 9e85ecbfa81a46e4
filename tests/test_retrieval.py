import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geobimors.errors import InputError
from geobimors.train.retrieval import load_caption_set, retrieval_recalls

from cli_helpers import assert_one_line_error, run_cli


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
