"""Image folders read on demand, hostile image files refused in one line, and detail views of images (`--views`)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geobimors.raster.images as images_module
from geobimors.raster.images import ImageFiles, read_rgb
from geobimors.train.data import load_image_folder
from geobimors.train.embedding import embed_images

from cli_helpers import assert_one_line_error, run_cli


def _save(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root: Path, first: tuple[int, int] = (48, 32)) -> Path:
    """Two classes of five PNGs; the first file sets the common size, the others are 40 x 40."""
    for c, name in enumerate(("Forest", "River")):
        for i in range(5):
            size = first if (c, i) == (0, 0) else (40, 40)
            _save(root / name / f"{i}.png", *size, seed=10 * c + i)
    return root


def _bomb_png(path: Path, side: int = 30_000) -> Path:
    """A 100-byte PNG that declares side x side RGB pixels (900 Mpx for the default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * (3 * side + 1)))
        + chunk(b"IEND", b"")
    )
    return path


def test_a_folder_reads_like_the_array_it_stands_for(tmp_path: Path) -> None:
    data = load_image_folder(_folder(tmp_path / "f"))
    files = data.images
    assert isinstance(files, ImageFiles)
    assert files.shape == (10, 32, 48, 3) and files.size == (48, 32)
    eager = np.stack([read_rgb(p, (48, 32)) for p in data.sources])
    np.testing.assert_array_equal(np.asarray(files), eager)
    np.testing.assert_array_equal(files[3], eager[3])
    np.testing.assert_array_equal(files[2:5], eager[2:5])
    np.testing.assert_array_equal(files[[7, 1]], eager[[7, 1]])
    mask = data.targets == 1
    np.testing.assert_array_equal(files[mask], eager[mask])
    assert files[[]].shape == (0, 32, 48, 3)
    np.testing.assert_array_equal(files[..., ::-1], eager[..., ::-1])
    np.testing.assert_array_equal(files[1:3, :2], eager[1:3, :2])
    np.testing.assert_array_equal(files[4, :, 5], eager[4, :, 5])
    # Subsets stay unread and keep their classes; training reads them into memory.
    river = data.subset([1])
    assert isinstance(river.images, ImageFiles) and river.labels == [data.labels[1]]
    assert river.targets.tolist() == [0] * 5 and river.sources == data.sources[5:]
    loaded = river.in_memory()
    assert isinstance(loaded.images, np.ndarray)
    np.testing.assert_array_equal(loaded.images, eager[5:])


def test_embedding_a_folder_reads_each_image_once_and_one_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_image_folder(_folder(tmp_path / "f"))
    reads: list[str] = []
    monkeypatch.setattr(images_module, "read_rgb", lambda p, size=None: reads.append(p) or read_rgb(p, size))
    held: list[int] = []

    class MeanColour:
        """The least a model needs: a batch in, one vector per image out."""

        def embed_chips(self, chips: np.ndarray) -> torch.Tensor:
            held.append(len(chips))
            return torch.nn.functional.normalize(torch.from_numpy(chips).float().mean(dim=(1, 2)), dim=-1)

    features = embed_images(MeanColour(), data.images, batch_size=4)  # type: ignore[arg-type]
    assert held == [4, 4, 2]
    assert sorted(reads) == sorted(data.sources)
    expected = torch.from_numpy(np.asarray(data.images)).float().mean(dim=(1, 2))
    torch.testing.assert_close(features, torch.nn.functional.normalize(expected, dim=-1))


def test_huge_photos_are_read_at_a_bounded_common_size(tmp_path: Path) -> None:
    data = load_image_folder(_folder(tmp_path / "f", first=(2048, 1536)))
    assert isinstance(data.images, ImageFiles)
    assert data.images.size == (1024, 768) and data.images[0].shape == (768, 1024, 3)


def test_a_bad_image_is_named_in_one_line_before_any_model_work(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    root = _folder(tmp_path / "bomb")
    _bomb_png(root / "River" / "9.png")
    result = run_cli(capsys, "evaluate", root, "-m", tiny_model, "--zero-shot")
    assert_one_line_error(result, 2, "River/9.png declares 900,000,000 pixels, too many to decode safely")
    # Pixels that were never an image, under an image's name.
    root = _folder(tmp_path / "text")
    (root / "Forest" / "notes.jpg").write_text("not a photo")
    result = run_cli(capsys, "evaluate", root, "-m", tiny_model, "--zero-shot")
    assert_one_line_error(result, 2, "cannot read image", "Forest/notes.jpg")


def test_captioning_a_folder_refuses_a_bomb_in_one_line(
    capsys: pytest.CaptureFixture[str], tiny_blip: str, tmp_path: Path
) -> None:
    root = _folder(tmp_path / "f")
    _bomb_png(root / "Forest" / "bomb.png")
    result = run_cli(capsys, "caption", root, "--captioner", tiny_blip, "--num-beams", "1", "-o", tmp_path / "c.csv")
    assert_one_line_error(result, 2, "bomb.png declares 900,000,000 pixels")
    assert not (tmp_path / "c.csv").exists()


def test_detail_views_blend_the_sub_views_features_with_the_full_chips(tiny_model: str) -> None:
    from geobimors.models.clip import load_model
    from geobimors.models.views import view_crops

    plain = load_model(tiny_model, "cpu")
    chips = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    full = plain.encode_images(plain.preprocess(chips))
    torch.testing.assert_close(plain.embed_chips(chips), full)
    six = plain.with_views(6, 0.25)
    assert six.model is plain.model and (six.views, six.view_blend) == (6, 0.25) and plain.views == 1
    sub = torch.stack([plain.encode_images(plain.preprocess(v)) for v in view_crops(chips, 6)[1:]]).mean(0)
    expected = torch.nn.functional.normalize(0.75 * full + 0.25 * sub, dim=-1)
    torch.testing.assert_close(six.embed_chips(chips), expected)
    assert not torch.allclose(six.embed_chips(chips), full, atol=1e-3)
    torch.testing.assert_close(plain.with_views(5, 0.0).embed_chips(chips), full)
    assert plain.with_views(5).view_blend == 0.5


def test_evaluate_with_detail_views_scores_the_blended_features(
    capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    import json

    from geobimors.heads.zero_shot import ZeroShotHead
    from geobimors.models.clip import load_model

    root = _folder(tmp_path / "f", first=(40, 40))
    report = tmp_path / "r.json"
    result = run_cli(capsys, "evaluate", root, "-m", tiny_model, "--views", "6", "--json", report)
    assert result.exit_code == 0, result.err
    assert "full image and 5 sub-views blended 0.5" in result.out
    got = json.loads(report.read_text())
    assert (got["views"], got["view_blend"]) == (6, 0.5)
    data = load_image_folder(root)
    clip = load_model(tiny_model, "cpu").with_views(6)
    predicted = ZeroShotHead(clip, data.labels).logits_from_embeddings(clip.embed_chips(np.asarray(data.images)))
    assert got["accuracy"] == pytest.approx(float((predicted.argmax(1).numpy() == data.targets).mean()))
    result = run_cli(capsys, "evaluate", root, "-m", tiny_model, "--view-blend", "0.3")
    assert_one_line_error(result, 2, "pass --views 5 or 6 with it")


def test_benchmark_packing_records_the_files_a_data_set_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/common.recorded_reads sees every sampled file, though folders are now read on demand."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import recorded_reads

    root = _folder(tmp_path / "f")
    with recorded_reads() as seen:
        data = load_image_folder(root, shots=2, seed=0)
    assert seen == {Path(p) for p in data.sources} and len(seen) == 4
