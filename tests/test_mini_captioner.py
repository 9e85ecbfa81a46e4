"""The bundled offline captioner: decoder, beam search, weights file, caption metrics."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geobimors.errors import ModelError
from geobimors.models.mini.captioner import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    CaptionDecoder,
    detokenize,
    load_decoder,
    state_for_file,
    tokenize,
)
from geobimors.train.captioning import caption_scores


def test_tokenize_and_detokenize():
    assert tokenize("There is a piece of farmland .") == ["there", "is", "a", "piece", "of", "farmland"]
    assert tokenize("Two 2-lane roads,  ok") == ["two", "2", "lane", "roads", "ok"]
    assert detokenize(["many", "planes"]) == "Many planes."
    assert detokenize([]) == ""


def _fit(decoder: CaptionDecoder, pooled: torch.Tensor, tokens: torch.Tensor, targets: list[list[int]]) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    longest = max(map(len, targets))
    ids = torch.tensor([[BOS, *t, EOS] + [PAD] * (longest - len(t)) for t in targets])
    for _ in range(150):
        logits = decoder(decoder.memory(pooled, tokens), ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=PAD
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()


@pytest.fixture()
def one_thread():
    # a decoder this small trains fastest on one thread (and is not slowed by other busy cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_decoder_learns_captions_that_depend_on_the_image():
    # two images (different memories), two different captions: generation must follow the image
    torch.manual_seed(0)
    decoder = CaptionDecoder(
        vocab_size=10, token_dim=6, pooled_dim=5, width=32, layers=1, heads=2, max_length=8, dropout=0.0
    )
    pooled, tokens = torch.randn(2, 5), torch.randn(2, 3, 6)
    targets = [[4, 5, 6], [7, 8, 9, 4]]
    _fit(decoder, pooled, tokens, targets)
    memory = decoder.memory(pooled, tokens)
    assert decoder.generate(memory, beams=1) == targets
    assert decoder.generate(memory, beams=3) == targets
    assert decoder.generate(memory[:0], beams=3) == []


def test_beam_search_finds_a_better_sequence_than_greedy():
    # a hand-built next-word table: greedy takes word 4 first (0.6) but 4 -> anything is flat,
    # while 5 (0.4) -> EOS is certain: beam search must prefer [5] (0.4) over [4, x] (0.6 * 0.25)
    class Table(CaptionDecoder):
        def forward(self, memory, words):
            n, length = words.shape
            logits = torch.full((n, length, 7), -1e9)
            last = words[:, -1]
            for i in range(n):
                if last[i] == BOS:
                    logits[i, -1, 4], logits[i, -1, 5] = 0.6, 0.4
                elif last[i] == 4:
                    logits[i, -1, 3:7] = 0.25
                elif last[i] == 5:
                    logits[i, -1, EOS] = 1.0
                else:
                    logits[i, -1, EOS] = 1.0
            return torch.where(logits > -1e8, logits.clamp(min=1e-9).log(), logits)

    table = Table(vocab_size=7, token_dim=2, pooled_dim=2, width=8, layers=1, heads=1, max_length=4)
    memory = torch.zeros(1, 2, 8)
    assert table.generate(memory, beams=1, cache=False)[0][0] == 4
    assert table.generate(memory, beams=2, cache=False) == [[5]]


@pytest.mark.usefixtures("one_thread")
def test_incremental_decoding_equals_the_full_recompute():
    # the bundled decoder on random image memories: cached steps give the same logits and the same captions
    decoder, _, _ = load_decoder()
    torch.manual_seed(0)
    memory = decoder.memory(
        torch.randn(12, decoder.config["pooled_dim"]), torch.randn(12, 4, decoder.config["token_dim"])
    )
    words = torch.tensor([[BOS, 5, 7, 9, 11]] * 3)
    full = decoder(memory[:3], words)
    state = None
    for length in range(1, words.shape[1] + 1):
        logits, state = decoder.next_word_logits(memory[:3], words[:, :length], state)
        torch.testing.assert_close(logits, full[:, length - 1], atol=1e-4, rtol=1e-4)
    for beams in (1, 3):
        assert decoder.generate(memory, beams, cache=True) == decoder.generate(memory, beams, cache=False)


def test_weights_file_round_trip_and_refusals(tmp_path: Path):
    decoder = CaptionDecoder(vocab_size=6, token_dim=4, pooled_dim=3, width=16, layers=1, heads=2).eval()
    vocabulary = [*SPECIALS, "river", "bridge"]
    tensors, metadata = state_for_file(decoder, vocabulary, "abc123")
    path = tmp_path / "cap.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    loaded, words, meta = load_decoder(path)
    assert words == vocabulary and meta["image_fingerprint"] == "abc123"
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not a geobimors mini captioner"):
        load_decoder(tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="missing"):
        load_decoder(tmp_path / "absent.safetensors")


def test_caption_scores_identity_and_hand_values():
    refs = [["there is a piece of farmland", "it is a piece of cropland"], ["many planes are parked"]]
    perfect = caption_scores(["There is a piece of farmland .", "Many planes are parked."], refs)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE-L"] == pytest.approx(1.0)
    wrong = caption_scores(["blue water", "blue water"], refs)
    assert wrong["BLEU-1"] == pytest.approx(0.0, abs=1e-9) and wrong["CIDEr"] == pytest.approx(0.0, abs=1e-9)
    # ROUGE-L of "many planes" against "many planes are parked": LCS 2, P = 1, R = 0.5, beta 1.2
    half = caption_scores(["there is a piece of farmland", "many planes"], refs)
    p, r, beta = 1.0, 0.5, 1.2
    expected = ((1 + beta**2) * p * r) / (r + beta**2 * p)
    assert half["ROUGE-L"] == pytest.approx((1.0 + expected) / 2)
    with pytest.raises(ValueError, match="candidates"):
        caption_scores(["a"], refs)


def test_default_captioner_is_mini_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from geobimors.models import captions

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(captions, "hub_model_available", lambda name: False)
    name, note = captions.default_captioner()
    assert name == "mini" and note is not None and "not downloaded" in note
    monkeypatch.setattr(captions, "hub_model_available", lambda name: True)
    assert captions.default_captioner() == (captions.CPU_CAPTIONER, None)


def test_hub_model_available_reads_folders_and_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from geobimors.models.captions import hub_model_available

    assert hub_model_available(str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not hub_model_available("Salesforce/blip-image-captioning-base")
    snapshot = tmp_path / "hub" / "models--Salesforce--blip-image-captioning-base" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    assert hub_model_available("Salesforce/blip-image-captioning-base")


def test_bundled_captioner_describes_real_chips(eurosat: Path, tmp_path: Path):
    import numpy as np
    from PIL import Image

    from geobimors.models.captions import CaptionCache, Captioner, CaptionerSpec

    files = [sorted((eurosat / "val" / c).iterdir())[0] for c in ("Forest", "River", "Highway")]
    chips = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    captioner = Captioner(CaptionerSpec("mini", num_beams=3), "cpu", cache=CaptionCache(tmp_path / "c.sqlite"))
    first = captioner.caption(chips)
    assert len(first) == 3 and all(text and text.endswith(".") for text in first)
    assert captioner.caption(chips) == first and captioner.cache_hits == 3  # cached, deterministic
    # the caption follows the image, not a constant sentence
    greedy = Captioner(CaptionerSpec("mini", num_beams=1), "cpu", cache=None).caption(chips)
    assert len(set(greedy)) >= 2


def test_bundled_captioner_fingerprint_follows_its_weights(tmp_path: Path):
    """Cached captions are keyed by the captioner's weights: a retrained file is another captioner."""
    from safetensors.torch import load_file, save_file

    from geobimors.models.mini.captioner import WEIGHTS_PATH, MiniCaptioner

    bundled = MiniCaptioner("cpu", beams=1)
    tensors = load_file(str(WEIGHTS_PATH))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    with safe_open(str(WEIGHTS_PATH), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(tmp_path / "retrained.safetensors"), metadata=metadata)
    retrained = MiniCaptioner("cpu", beams=1, weights=tmp_path / "retrained.safetensors")
    assert retrained.fingerprint != bundled.fingerprint
    assert MiniCaptioner("cpu", beams=1).fingerprint == bundled.fingerprint


def test_bundled_captioner_refuses_other_image_weights(monkeypatch: pytest.MonkeyPatch):
    from geobimors.models.clip import ClipModel
    from geobimors.models.mini.captioner import MiniCaptioner

    monkeypatch.setattr(ClipModel, "fingerprint", property(lambda self: "0000000000000000"))
    with pytest.raises(ModelError, match="retrain it with training/train_mini_captioner"):
        MiniCaptioner("cpu")


def test_cli_captioning_report(tmp_path: Path, eurosat: Path, capsys: pytest.CaptureFixture[str]):
    import json

    from cli_helpers import run_cli

    lines = []
    for cls, text in (("Forest", "there is a dense forest"), ("SeaLake", "it is a lake with blue water")):
        for image in sorted((eurosat / "val" / cls).iterdir())[:2]:
            lines.append(json.dumps({"image": str(image), "split": "test", "captions": [text, f"{text} here"]}))
    captions = tmp_path / "c.jsonl"
    captions.write_text("\n".join(lines))
    report = tmp_path / "r.json"
    result = run_cli(capsys, "evaluate", captions, "--task", "captioning", "--device", "cpu", "--json", report)
    assert result.exit_code == 0, result.err
    assert "CIDEr" in result.out
    data = json.loads(report.read_text())
    assert data["n_images"] == 4 and data["captioner"] == "mini"
    assert 0.0 <= data["BLEU-4"] <= data["BLEU-1"] <= 1.0
