"""Model names, safe checkpoint loading, offline errors, devices and precisions."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from geobimors.errors import ModelError
from geobimors.models.clip import load_model, resolve_model_name

from tiny_models import TINY_VIT

TINY_ARCH = "geobimors-tiny-test"


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny architecture with open_clip, as users register their own configs."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(folder)
    return TINY_ARCH


@pytest.fixture(scope="module")
def tiny_state(tiny_arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return open_clip.create_model(tiny_arch).state_dict()


class _Exploit:
    """Unpickling this would create a file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_resolve_names(tiny_arch: str, tmp_path: Path) -> None:
    assert resolve_model_name("ViT-B-16:openai").weights == "openai"
    assert resolve_model_name("ViT-B-32:random").weights is None
    assert resolve_model_name("hf-hub:chendelong/RemoteCLIP-like").kind == "hf-hub"
    assert resolve_model_name("ViT-B-32:hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt").kind == "openclip"
    assert resolve_model_name("mini").kind == "bundled"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert resolve_model_name(f"{tiny_arch}:{weights}").weights == str(weights)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ViT-B-61:openai", "unknown model.*did you mean"),
        ("ViT-B-16", "needs weights"),
        ("ViT-B-16:no-such-tag", "not a pretrained tag"),
        ("ViT-B-16:/no/such/file.pt", "checkpoint file not found"),
        ("hf-hub:just-a-name", "hf-hub:ORG/REPO"),
        ("", "empty"),
    ],
)
def test_resolve_errors(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_model_name(name)


def test_local_checkpoints_load_safely(tiny_arch: str, tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    safe = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(safe))
    model = load_model(f"{tiny_arch}:{safe}", device="cpu")
    assert torch.equal(model.model.state_dict()["text_projection"], tiny_state["text_projection"])
    plain = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_state}, plain)
    model = load_model(f"{tiny_arch}:{plain}", device="cpu")
    assert torch.equal(model.model.state_dict()["text_projection"], tiny_state["text_projection"])


def test_pickled_code_is_refused_not_run(tiny_arch: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Exploit(marker)}, f)
    with pytest.raises(ModelError, match="refusing to load"):
        load_model(f"{tiny_arch}:{evil}", device="cpu")
    assert not marker.exists()


def test_truncated_and_mismatched_weights(tiny_arch: str, tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file(tiny_state, str(full))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(ModelError, match="could not load weights"):
        load_model(f"{tiny_arch}:{truncated}", device="cpu")
    other = {k: v for k, v in tiny_state.items() if k != "text_projection"}
    partial = tmp_path / "partial.safetensors"
    save_file(other, str(partial))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(f"{tiny_arch}:{partial}", device="cpu")


def test_offline_weights_give_one_line_fix() -> None:
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    message = str(info.value)
    assert "could not obtain weights" in message and "HF_HUB_OFFLINE" in message and "\n" not in message


def test_devices_and_precisions(tiny_model: str) -> None:
    if torch.cuda.is_available():
        assert load_model(tiny_model, device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ModelError, match="no CUDA"):
            load_model(tiny_model, device="cuda")
    with pytest.raises(ModelError, match="fp16 needs a CUDA"):
        load_model(tiny_model, device="cpu", precision="fp16")
    fp32 = load_model(tiny_model, device="cpu")
    bf16 = load_model(tiny_model, device="cpu", precision="bf16")
    assert load_model(tiny_model, device="cpu") is fp32  # cached
    chips = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a = fp32.encode_images(fp32.preprocess(chips))
    b = bf16.encode_images(bf16.preprocess(chips))
    assert a.dtype == b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.98


def test_batched_preprocessing_matches_open_clip(tiny_model: str) -> None:
    model = load_model(tiny_model, device="cpu")
    chips = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    cfg = open_clip.get_model_preprocess_cfg(model.model)
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])
    expected = torch.stack([transform(Image.fromarray(c)) for c in chips])
    torch.testing.assert_close(model.preprocess(chips), expected, atol=1e-5, rtol=0)
    # Larger chips are resized to the model input size like open_clip does (up to interpolation details).
    big = np.repeat(np.repeat(chips, 2, axis=1), 2, axis=2)
    expected = torch.stack([transform(Image.fromarray(c)) for c in big])
    assert (model.preprocess(big) - expected).abs().mean() < 0.05


def test_text_features_are_normalised(tiny_model: str) -> None:
    model = load_model(tiny_model, device="cpu")
    features = model.encode_texts(["forest", "a lake"] * 200, batch_size=64)
    assert features.shape == (400, 32)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(400))
