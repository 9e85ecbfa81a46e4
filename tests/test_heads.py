"""Prompt-learning heads: exact truncated encoding, frozen towers, parameter counts, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geobimors.errors import ModelError
from geobimors.heads.bimors import BiMoRSHead
from geobimors.heads.checkpoint import build_head, load_head, read_metadata, save_head
from geobimors.heads.cocoop import CoCoOpHead
from geobimors.heads.coop import CoOpHead
from geobimors.labels import Label
from geobimors.models.caption_encoder import load_caption_encoder
from geobimors.models.captions import CaptionCache, Captioner, CaptionerSpec
from geobimors.models.clip import load_model
from geobimors.models.text import PromptTextEncoder
from geobimors.train.data import LabelledImages, load_image_folder, split_base_new
from geobimors.train.loop import TrainSettings, train_head

from tiny_captioners import BrightnessCaptioner
from tiny_models import TINY_VIT_UNEQUAL, make_tiny_clip_dir

LABELS = [Label(n, n) for n in ("annual crop land", "forest", "residential buildings", "sea or lake")]
NONE = CaptionerSpec("none")


def chips(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("model_name", ["tiny", "mini"])
def test_truncated_prompts_equal_full_context(model_name: str, tiny_model: str) -> None:
    clip = load_model(tiny_model if model_name == "tiny" else "mini", device="cpu")
    encoder = PromptTextEncoder(clip)
    prompts = encoder.class_prompts([label.prompt for label in LABELS], 4)
    context = torch.randn(3, 4, encoder.width) * 0.05  # per-image context, B x C prompts
    embeddings = encoder.assemble(prompts, context)
    tokens = prompts.tokens.repeat(3, 1)
    assert prompts.max_length < tokens.shape[1]
    truncated = encoder.encode(embeddings, tokens, truncate=True)
    full = encoder.encode(embeddings, tokens, truncate=False)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=0)
    # With the context of "a photo of a" the prompt equals the plain tokenised sentence.
    shared = encoder.word_embeddings("a photo of a")
    plain = clip.model.encode_text(clip.tokenizer([f"a photo of a {label.prompt}." for label in LABELS]))
    torch.testing.assert_close(
        encoder.encode(encoder.assemble(prompts, shared), prompts.tokens), plain, atol=1e-5, rtol=0
    )


def test_parameter_counts(tmp_path: Path) -> None:
    # Widths all differ (visual tokens W=64, text tokens D=32, joint embedding E=24); n_ctx=4.
    clip = load_model(str(make_tiny_clip_dir(tmp_path / "unequal", config=TINY_VIT_UNEQUAL)), device="cpu")
    # CoOp: the context, 4 x 32.
    coop = build_head("coop", clip, LABELS)
    assert coop.trainable_parameter_count() == CoOpHead.parameter_formula(4, 32) == 128
    # CoCoOp: context 128 + meta-net Linear(24 -> 24 // 16 = 1) 24 + 1 + Linear(1 -> 32) 32 + 32.
    cocoop = build_head("cocoop", clip, LABELS)
    assert cocoop.trainable_parameter_count() == CoCoOpHead.parameter_formula(4, 32, 24) == 128 + 25 + 64
    # BiMoRS without captioner: context 128
    #   + meta-net Linear(64 -> 64 // 16 = 4) 256 + 4, Linear(4 -> 32) 128 + 32
    #   + caption projection Linear(32 -> 32) 1024 + 32
    #   + two LayerNorms (32 weights + 32 biases each) 128
    #   + attention: in-projection 3 x 32 x 32 + 96, out-projection 32 x 32 + 32
    #   + the empty-caption embedding 32.
    attention = 3 * 32 * 32 + 96 + 32 * 32 + 32
    empty = build_head("bimors", clip, LABELS, captioner=NONE)
    assert isinstance(empty, BiMoRSHead)
    assert (empty.visual_width, empty.ctx_dim, empty.caption_dim) == (64, 32, 32)
    expected = 128 + (256 + 4 + 128 + 32) + (1024 + 32) + 128 + attention + 32
    assert expected == 5988
    assert empty.trainable_parameter_count() == BiMoRSHead.parameter_formula(4, 32, 64, 32, empty=True) == expected
    # With a captioner: MiniLM captions (384 wide) projected by Linear(384 -> 32), no empty caption.
    captioned = build_head("bimors", clip, LABELS, captioner=CaptionerSpec("some/captioner"))
    assert captioned.caption_dim == 384
    expected = 128 + (256 + 4 + 128 + 32) + (384 * 32 + 32) + 128 + attention
    assert expected == 17220
    assert (
        captioned.trainable_parameter_count() == BiMoRSHead.parameter_formula(4, 32, 64, 384, empty=False) == expected
    )


def test_bimors_dimensions_come_from_the_models() -> None:
    clip = load_model("mini", device="cpu")  # ResNet tokens (512 wide), MiniLM text (384 wide)
    head = build_head("bimors", clip, LABELS, captioner=NONE)
    assert isinstance(head, BiMoRSHead)
    assert (head.visual_width, head.ctx_dim) == (512, 384)
    assert head.meta_net[0].in_features == 512 and head.meta_net[0].out_features == 32
    assert head.meta_net[2].out_features == 384
    assert head.attention.num_heads == 4


def _set(clip_name: str, n: int = 4, seed: int = 0, size: int = 32) -> LabelledImages:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n * len(LABELS), size, size, 3), dtype=np.uint8)
    targets = np.repeat(np.arange(len(LABELS)), n)
    for c in range(len(LABELS)):  # class-dependent colours: learnable even for a random CLIP
        images[targets == c, :, :, c % 3] = 40 + 60 * c
    return LabelledImages(images, targets, LABELS, [f"{clip_name}-{i}" for i in range(len(targets))])


@pytest.mark.parametrize("kind", ["coop", "cocoop", "bimors"])
def test_training_updates_only_the_head(kind: str, tiny_model: str, tiny_blip2: str) -> None:
    clip = load_model(tiny_model, device="cpu")
    captioner = Captioner(CaptionerSpec(tiny_blip2, max_new_tokens=4, num_beams=1), "cpu") if kind == "bimors" else None
    head = build_head(kind, clip, LABELS, captioner=captioner.spec if captioner else None)
    frozen = {k: v.clone() for k, v in clip.model.state_dict().items()}
    others = []
    if captioner is not None:
        others = [(captioner.model, {k: v.clone() for k, v in captioner.model.state_dict().items()})]
        encoder = load_caption_encoder("minilm", clip.device)
        others.append((encoder.model, {k: v.clone() for k, v in encoder.model.state_dict().items()}))
    start = {k: v.clone() for k, v in head.state_dict().items()}
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in clip.model.parameters())
    data = _set("tiny", n=2)
    train_head(
        head,
        data,
        None,
        # No weight decay: a parameter moves only when its gradient reaches it.
        TrainSettings(epochs=2, warmup_epochs=0, lr=0.05, weight_decay=0.0),
        captioner.caption if captioner else None,
        progress_mode="none",
    )
    assert all(torch.equal(frozen[k], v) for k, v in clip.model.state_dict().items())
    for model, before in others:
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Every learnable tensor of the head learned (for BiMoRS: context, meta-net, caption projection, attention).
    unchanged = [k for k, v in head.state_dict().items() if torch.equal(start[k], v)]
    assert not unchanged, unchanged


def test_captions_change_bimors_logits_and_train_the_caption_projection(tiny_model: str) -> None:
    clip = load_model(tiny_model, device="cpu")
    head = build_head("bimors", clip, LABELS, captioner=CaptionerSpec("a/captioner"))
    head.eval()
    x = clip.preprocess(chips(2))
    forest, lake = "an aerial view of a forest", "a lake with a river"
    with_forest = head.logits(x, [forest, forest])
    with_lake = head.logits(x, [lake, lake])
    assert (with_forest - with_lake).abs().max() > 1e-2
    # Each chip's logits follow its own caption.
    torch.testing.assert_close(head.logits(x, [forest, lake]), torch.stack([with_forest[0], with_lake[1]]))
    # One backward pass reaches every parameter, the caption projection included.
    head.train()
    loss = torch.nn.functional.cross_entropy(head(x, head.encode_captions([forest, lake])), torch.tensor([1, 3]))
    loss.backward()
    no_gradient = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_gradient, no_gradient
    assert head.caption_proj.weight.grad is not None and head.caption_proj.weight.grad.abs().sum() > 0


def _fit(head: BiMoRSHead, images: torch.Tensor, targets: torch.Tensor, captions: list[str] | None) -> None:
    """Full-batch Adam on one small set (training settings are not what this checks)."""
    features = head.encode_captions(captions)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.02)
    head.train()
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(head(images, features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()


def test_a_caption_dependent_task_is_solved_only_with_captions(blind_tiny_model: str) -> None:
    # The image tower is blind (every chip gives the same features); the captioner is not:
    # a chip's brightness picks its caption, and the caption says the class.
    clip = load_model(blind_tiny_model, device="cpu")
    names = ["forest", "river", "field", "city"]
    labels = [Label(n, n) for n in names]
    captioner = BrightnessCaptioner(names)
    images = np.stack([np.full((32, 32, 3), captioner.level_value(c), np.uint8) for c in range(4)])
    x, targets = clip.preprocess(images), torch.arange(4)
    features = clip.encode_images(x)
    assert torch.equal(features, features[:1].expand_as(features))  # the image alone says nothing
    captions = captioner.caption(images)
    assert captions == [f"an aerial view of {n}" for n in names]

    torch.manual_seed(0)
    with_captions = build_head("bimors", clip, labels, captioner=CaptionerSpec("brightness"))
    assert isinstance(with_captions, BiMoRSHead)
    _fit(with_captions, x, targets, captions)
    assert with_captions.logits(x, captions).argmax(1).tolist() == [0, 1, 2, 3]
    # The same chips with one caption for all: one answer for all.
    assert len(set(with_captions.logits(x, [captions[2]] * 4).argmax(1).tolist())) == 1

    torch.manual_seed(0)
    without = build_head("bimors", clip, labels, captioner=NONE)
    assert isinstance(without, BiMoRSHead)
    _fit(without, x, targets, None)
    logits = without.logits(x)
    torch.testing.assert_close(logits, logits[:1].expand_as(logits))  # chance: 1 of 4 right
    assert (logits.argmax(1) == targets).sum() == 1


@pytest.mark.slow
def test_a_small_set_is_overfitted(eurosat: Path, tiny_blip2: str) -> None:
    clip = load_model("mini", device="cpu")
    data = load_image_folder(eurosat / "train", shots=2, seed=3).subset([0, 1, 7, 9])
    captioner = Captioner(CaptionerSpec(tiny_blip2, max_new_tokens=4, num_beams=1), "cpu")
    head = build_head("bimors", clip, data.labels, captioner=captioner.spec)
    result = train_head(
        head,
        data,
        None,
        TrainSettings(epochs=25, batch_size=8, lr=0.02, warmup_epochs=0, crop_scale=(1.0, 1.0)),
        captioner.caption,  # the whole BiMoRS path: captions, caption encoder, caption projection
        progress_mode="none",
    )
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_accuracy"] == 1.0


def test_checkpoint_round_trip_and_refusals(tiny_model: str, tmp_path: Path) -> None:
    clip = load_model(tiny_model, device="cpu")
    x = clip.preprocess(chips())
    for kind in ("coop", "cocoop", "bimors"):
        head = build_head(kind, clip, LABELS, captioner=NONE)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        path = save_head(head, tmp_path / f"{kind}.safetensors", {"seed": 7})
        loaded = load_head(path, clip)
        assert loaded.kind == kind and loaded.labels == LABELS
        torch.testing.assert_close(loaded.logits(x), head.logits(x), atol=0, rtol=0)
        meta = read_metadata(path)
        assert meta["clip_model"] == tiny_model and meta["clip_fingerprint"] == clip.fingerprint
        assert meta["training"]["seed"] == 7 and meta["geobimors_version"]
    other = load_model(str(make_tiny_clip_dir(tmp_path / "other-clip", seed=1)), device="cpu")
    with pytest.raises(ModelError, match="was trained for CLIP"):
        load_head(tmp_path / "coop.safetensors", other)
    bare = tmp_path / "bare.safetensors"
    save_file({"ctx": torch.zeros(4, 32)}, str(bare))
    with pytest.raises(ModelError, match="no geobimors metadata"):
        load_head(bare, clip)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "coop.safetensors").read_bytes()[:100])
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_head(truncated, clip)


@pytest.mark.parametrize("kind", ["coop", "cocoop", "bimors"])
def test_new_class_names_use_the_learned_context(kind: str, tiny_model: str) -> None:
    clip = load_model(tiny_model, device="cpu")
    x = clip.preprocess(chips())
    head = build_head(kind, clip, LABELS[:2], captioner=NONE)
    head.eval()
    untrained = {k: v.clone() for k, v in head.state_dict().items()}
    # A learned context arrives as trained weights do (load_head: weights, then the classes asked for).
    shift = torch.randn(untrained["ctx"].shape, generator=torch.Generator().manual_seed(1))
    learned = {**untrained, "ctx": untrained["ctx"] + 0.5 * shift}
    head.load_state_dict(learned)
    assert head.logits(x).shape == (3, 2)  # (CoOp caches its class features here)
    head.set_labels(LABELS)  # two class names it never saw
    logits = head.logits(x)
    assert logits.shape == (3, 4)
    # The same weights on a head made for all four classes give exactly these logits ...
    full = build_head(kind, clip, LABELS, captioner=NONE)
    full.load_state_dict(learned)
    full.eval()
    torch.testing.assert_close(logits, full.logits(x))
    # ... and the new names score otherwise than with the untrained context.
    full.load_state_dict(untrained)
    assert (logits[:, 2:] - full.logits(x)[:, 2:]).abs().max() > 1e-2


def test_base_new_split() -> None:
    assert split_base_new(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert split_base_new(5) == ([0, 1, 2], [3, 4])
    data = _set("x", n=1)
    base = data.subset([2, 3])
    assert base.labels == LABELS[2:] and base.targets.tolist() == [0, 1]


def test_caption_cache_avoids_model_calls(tiny_blip2: str, tiny_blip: str, tmp_path: Path) -> None:
    cache = CaptionCache(tmp_path / "captions.sqlite")
    images = chips(5, 40, seed=9)
    for name in (tiny_blip2, tiny_blip):
        captioner = Captioner(CaptionerSpec(name, max_new_tokens=4, num_beams=2), "cpu", cache=cache)
        first = captioner.caption(images, batch_size=2)
        assert captioner.calls == 3 and all(isinstance(c, str) for c in first)
        again = Captioner(CaptionerSpec(name, max_new_tokens=4, num_beams=2), "cpu", cache=cache)
        assert again.caption(images) == first and again.calls == 0
        # Other generation settings are another cache entry.
        other = Captioner(CaptionerSpec(name, max_new_tokens=3, num_beams=2), "cpu", cache=cache)
        other.caption(images[:1])
        assert other.calls == 1
        # Other weights under the same name (a new hub revision, a retrained bundled captioner) too.
        retrained = Captioner(CaptionerSpec(name, max_new_tokens=4, num_beams=2), "cpu", cache=cache)
        retrained.weights_id = "another revision"
        retrained.caption(images[:1])
        assert retrained.calls == 1


def test_captioner_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="could not"):
        Captioner(CaptionerSpec("Salesforce/blip-image-captioning-base"), "cpu")
    not_blip = tmp_path / "bert"
    import shutil

    from geobimors.models.mini import text_tower_path

    shutil.copytree(text_tower_path(), not_blip)
    with pytest.raises(ModelError, match="BLIP-2 or BLIP"):
        Captioner(CaptionerSpec(str(not_blip)), "cpu")
