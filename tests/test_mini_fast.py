"""The bundled mini model's plain-torch fast path agrees with its open_clip path, and imports neither.

The open_clip path (``load_mini_open_clip``) is the reference: the same shipped weights go into
both, so image and text embeddings, visual tokens, tokens, temperature, fingerprint and the
prompt-learning heads built on them must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from geobimors.errors import ModelError
from geobimors.heads.bimors import BiMoRSHead
from geobimors.heads.cocoop import CoCoOpHead
from geobimors.heads.coop import CoOpHead
from geobimors.heads.zero_shot import ZeroShotHead
from geobimors.labels import Label
from geobimors.models import mini
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import ClipModel
from geobimors.models.mini import towers

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
CPU = torch.device("cpu")
LABELS = [Label(n, n) for n in ("annual crop land", "forest", "residential buildings", "sea or lake", "highway")]
TEXTS = [
    "a satellite image of forest.",
    "Sea or LAKE",
    "  herbaceous\tvegetation \n",
    "café &amp; “roads”",  # ftfy and HTML unescaping
    "industrial buildings: warehouses, factories and their yards " * 12,  # longer than the context
    "",
    "x",
]
HEAVY = ("open_clip", "timm", "transformers", "torchvision")


@pytest.fixture(scope="module")
def both() -> tuple[ClipModel, ClipModel]:
    """(fast, open_clip) mini models, uncached (text features computed every time)."""
    torch.set_num_threads(1)
    fast = mini.load_mini(CPU, "fp32")
    fast.text_cache_key = None
    reference = mini.load_mini_open_clip(CPU, "fp32")
    assert isinstance(fast.model, towers.MiniCLIP)
    assert type(reference.model).__name__ == "CustomTextCLIP"
    return fast, reference


def images(clip: ClipModel, n: int, size: int, seed: int) -> torch.Tensor:
    chips = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return clip.preprocess(chips)


def test_same_weights_preprocessing_and_tokens(both: tuple[ClipModel, ClipModel]) -> None:
    fast, reference = both
    assert fast.fingerprint == reference.fingerprint
    assert fast.model.state_dict().keys() == reference.model.state_dict().keys()
    assert fast.logit_scale == reference.logit_scale
    assert (fast.image_size, fast.interpolation) == (reference.image_size, reference.interpolation)
    assert torch.equal(fast._mean, reference._mean) and torch.equal(fast._std, reference._std)
    assert torch.equal(fast.tokenizer(TEXTS), reference.tokenizer(TEXTS))
    assert fast.overflowing(TEXTS) == reference.overflowing(TEXTS) == [i == 4 for i in range(len(TEXTS))]


@pytest.mark.parametrize(("n", "size", "seed"), [(1, 64, 0), (5, 64, 1), (3, 40, 2), (4, 97, 3)])
def test_image_embeddings_and_tokens_agree(both: tuple[ClipModel, ClipModel], n: int, size: int, seed: int) -> None:
    fast, reference = both
    x = images(fast, n, size, seed)
    assert torch.equal(x, images(reference, n, size, seed))
    expected = reference.encode_images(x)
    assert torch.allclose(fast.encode_images(x), expected, atol=TOLERANCE, rtol=0)
    features, tokens = fast.encode_images_with_tokens(x)
    ref_features, ref_tokens = reference.encode_images_with_tokens(x)
    assert tokens.shape == ref_tokens.shape == (n, 4, 512)
    assert torch.allclose(features, ref_features, atol=TOLERANCE, rtol=0)
    assert torch.allclose(tokens, ref_tokens, atol=TOLERANCE, rtol=0)
    assert not torch.allclose(expected[0], expected[-1], atol=1e-3) or n == 1  # inputs differ, so do outputs


def test_text_embeddings_agree(both: tuple[ClipModel, ClipModel]) -> None:
    fast, reference = both
    texts = [*TEXTS, *(f"a satellite image of {label.name}." for label in LABELS)]
    got, expected = fast.encode_texts(texts), reference.encode_texts(texts)
    assert got.shape == (len(texts), 384)
    assert torch.allclose(got, expected, atol=TOLERANCE, rtol=0)
    # One at a time (no padding shared with longer texts) gives the same features.
    assert torch.allclose(fast.encode_texts(texts[:1]), expected[:1], atol=TOLERANCE, rtol=0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_tokenizer_matches_open_clip(both: tuple[ClipModel, ClipModel], texts: list[str]) -> None:
    fast, reference = both
    assert torch.equal(fast.tokenizer(texts), reference.tokenizer(texts))


def test_zero_shot_and_prompt_heads_agree(both: tuple[ClipModel, ClipModel]) -> None:
    fast, reference = both
    x = images(fast, 4, 64, 7)
    heads: dict[str, Any] = {
        "zero-shot": lambda clip: ZeroShotHead(clip, LABELS),
        "coop": lambda clip: CoOpHead(clip, LABELS),
        "cocoop": lambda clip: CoCoOpHead(clip, LABELS),
        "bimors": lambda clip: BiMoRSHead(clip, LABELS, captioner=CaptionerSpec("none")),
    }
    for kind, make in heads.items():
        built = []
        for clip in (fast, reference):
            torch.manual_seed(0)  # the same random initialisation of the heads' own layers
            built.append(make(clip))
        head, ref_head = built
        with torch.no_grad():
            logits, expected = head.logits(x), ref_head.logits(x)
        assert torch.allclose(logits, expected, atol=1e-4, rtol=0), kind
        if kind == "zero-shot":
            continue
        # Training: the gradients that reach the learned context through the frozen text tower agree.
        for h in built:
            h.train()
            h.zero_grad()
            torch.nn.functional.cross_entropy(h(x), torch.tensor([0, 1, 2, 3])).backward()
        assert head.ctx.grad is not None and float(head.ctx.grad.abs().sum()) > 0, kind
        assert torch.allclose(head.ctx.grad, ref_head.ctx.grad, atol=1e-5, rtol=1e-3), kind
        assert all(p.grad is None for p in fast.model.parameters()), kind  # the towers stay frozen


def _config_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any) -> dict[str, Any]:
    config = json.loads(mini.CONFIG_PATH.read_text())
    change(config)
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps(config))
    monkeypatch.setattr(mini, "CONFIG_PATH", path)
    return config


@pytest.mark.parametrize("size", [72, 96])  # 72: odd feature maps (9 px) before the last stages
def test_the_config_sets_the_input_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    def bigger(config: dict[str, Any]) -> None:
        config["preprocess_cfg"]["size"] = size
        config["model_cfg"]["vision_cfg"]["image_size"] = size

    _config_with(tmp_path, monkeypatch, bigger)
    fast, reference = mini.load_mini(CPU, "fp32"), mini.load_mini_open_clip(CPU, "fp32")
    assert isinstance(fast.model, towers.MiniCLIP)
    assert fast.image_size == reference.image_size == (size, size)
    x = images(fast, 2, 64, 5)
    assert x.shape[-2:] == (size, size)
    assert torch.allclose(fast.encode_images(x), reference.encode_images(x), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("vision_cfg", "timm_model_name", "resnet18"),
        ("vision_cfg", "timm_pool", "max"),
        ("text_cfg", "hf_pooler_type", "cls_pooler"),
    ],
)
def test_other_architectures_fall_back_to_open_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, key: str, value: str
) -> None:
    config = _config_with(tmp_path, monkeypatch, lambda c: c["model_cfg"][section].__setitem__(key, value))
    assert towers.fast_spec(config, mini.text_tower_path()) is None
    if key == "hf_pooler_type":  # the weights still fit: the model loads through open_clip
        clip = mini.load_mini(CPU, "fp32")
        assert type(clip.model).__name__ == "CustomTextCLIP"
        assert clip.text_cache_key is None


def test_weights_that_do_not_fit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = load_file(str(mini.MODEL_DIR / "mini.safetensors"))
    for name, broken in {
        "missing": {k: v for k, v in state.items() if k != "visual.head.proj.weight"},
        "shape": {**state, "visual.head.proj.weight": torch.zeros(10, 512)},
    }.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(broken, str(path))
        _config_with(tmp_path, monkeypatch, lambda c, p=path: c["geobimors"].__setitem__("weights", str(p)))
        with pytest.raises(ModelError, match="do not fit its config"):
            mini.load_mini(CPU, "fp32")


def test_text_features_are_cached_per_weights_and_texts(
    both: tuple[ClipModel, ClipModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _ = both
    cached = mini.load_mini(CPU, "fp32")
    assert cached.text_cache_key is not None
    monkeypatch.setenv("GEOBIMORS_CACHE_DIR", str(tmp_path))
    texts = TEXTS[:3]
    first = cached.encode_texts(texts)
    files = list((tmp_path / "text-features").glob("*.safetensors"))
    assert len(files) == 1 and torch.equal(load_file(str(files[0]))["features"], first)
    save_file({"features": torch.full_like(first, 0.5)}, str(files[0]))  # proves the second call reads it
    assert torch.equal(cached.encode_texts(texts), torch.full_like(first, 0.5))
    cached.encode_texts(texts[:2])  # other texts, another entry
    assert len(list((tmp_path / "text-features").glob("*.safetensors"))) == 2
    files[0].write_bytes(b"not a safetensors file")  # a damaged entry is recomputed and replaced
    assert torch.allclose(cached.encode_texts(texts), fast.encode_texts(texts), atol=TOLERANCE, rtol=0)
    assert not list((tmp_path / "text-features").glob(".*tmp"))
    other = mini.files_key("mini-fast", [mini.CONFIG_PATH, tmp_path / "text-features" / files[0].name])
    assert other != cached.text_cache_key  # other files (or a rewritten one), another key


def test_the_fast_path_imports_no_open_clip_timm_or_transformers(tmp_path: Path) -> None:
    """The CLI maps the sample scene with the bundled model without importing the heavy libraries."""
    out = tmp_path / "out.gpkg"
    sample = ROOT / "sample_data"
    argv = ["map", str(sample / "L7_ETMs.tif"), "--labels", str(sample / "labels.txt"), "--bands", "3,2,1"]
    argv += ["-o", str(out), "--progress", "none"]
    code = f"""
import json, sys
from geobimors.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    assert not exit.code, exit.code
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""
    env = {**os.environ, "GEOBIMORS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert out.is_file()
    assert "torch" in modules and "tokenizers" in modules  # the check sees what was imported
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
