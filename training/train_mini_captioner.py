"""Train the bundled mini captioner on UCM-Captions and report its test figures.

Splits are the dataset's own (``split`` in the jsonl): the decoder learns on
``train`` (1,680 images x 5 captions), the epoch kept is the one with the best
CIDEr on ``val`` (210 images), and ``test`` (210 images) is only scored at the
end, beside a nearest-neighbour baseline (the consensus caption of the most
similar training images). The image tower is the bundled ``mini`` model, frozen;
its features are computed once for the 8 rotations/flips of every training image.

Reproduce (from the repository root)::

    .venv/bin/python training/train_mini_captioner.py ../shared/data/captions/ucm_captions.jsonl \\
        --out geobimors/models/mini/captioner.safetensors --log docs/benchmarks/captioner.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from geobimors.models.clip import load_model
from geobimors.models.mini.captioner import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    CaptionDecoder,
    detokenize,
    image_features,
    state_for_file,
    tokenize,
)
from geobimors.raster.images import read_rgb
from geobimors.train.captioning import caption_scores
from geobimors.train.retrieval import load_caption_set

IMAGE_SIZE = (256, 256)  # UC Merced's size; the 44 off-size images are resized to it


def dihedral(chips: np.ndarray, view: int) -> np.ndarray:
    """One of the 8 rotations/flips of (N, H, W, 3) chips (aerial images have no 'up')."""
    out = np.rot90(chips, k=view % 4, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if view >= 4 else out)


@torch.no_grad()
def features(clip: Any, paths: list[Path], views: int, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (V, N, E) and token (V, N, T, W) features of images under ``views`` rotations/flips."""
    images = np.stack([read_rgb(p, IMAGE_SIZE) for p in paths])
    pooled, tokens = [], []
    for view in range(views):
        parts = [image_features(clip, dihedral(images[s : s + batch], view)) for s in range(0, len(images), batch)]
        pooled.append(torch.cat([p for p, _ in parts]))
        tokens.append(torch.cat([t for _, t in parts]))
    return torch.stack(pooled), torch.stack(tokens)


def cached_features(
    clip: Any, sets: dict[str, Any], cache: Path | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features of every split (8 views of train, 1 of val/test), from ``cache`` when it holds this image tower's."""
    from safetensors.torch import load_file

    views = {"train": 8, "val": 1, "test": 1}
    if cache is not None and cache.is_file():
        stored = load_file(str(cache))
        if stored.get("fingerprint") is not None and bytes(stored["fingerprint"].tolist()).decode() == clip.fingerprint:
            return {split: (stored[f"{split}.pooled"], stored[f"{split}.tokens"]) for split in views}
    feats = {split: features(clip, sets[split].images, n) for split, n in views.items()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{split}.{part}": t.contiguous()
            for split, pair in feats.items()
            for part, t in zip(("pooled", "tokens"), pair)
        }
        tensors["fingerprint"] = torch.tensor(list(clip.fingerprint.encode()), dtype=torch.uint8)
        save_file(tensors, str(cache))
    return feats


def build_vocabulary(captions: list[list[str]], min_count: int) -> list[str]:
    """Words seen at least ``min_count`` times in the training captions, most frequent first."""
    counts = Counter(word for group in captions for caption in group for word in tokenize(caption))
    return [*SPECIALS, *(w for w, c in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if c >= min_count)]


def encode(caption: str, index: dict[str, int], max_length: int) -> list[int]:
    """Word ids of a caption: BOS, words (unknown ones as UNK), EOS, cut to the decoder's length."""
    words = [index.get(w, UNK) for w in tokenize(caption)][: max_length - 1]
    return [BOS, *words, EOS]


def pad(rows: list[list[int]]) -> torch.Tensor:
    """Right-padded (N, L) id tensor."""
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def training_step(
    decoder: CaptionDecoder, memory: torch.Tensor, ids: torch.Tensor, loss_fn: nn.Module, optimizer: Any, schedule: Any
) -> float:
    """One teacher-forced step on word ids (N, L) that start with BOS; the batch's mean loss."""
    logits = decoder(memory, ids[:, :-1])
    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return float(loss.detach())


def train_split_captions(path: Path) -> list[str]:
    """The train-split captions of a caption jsonl (RSICD, RSITMD, Sydney: text only, no images needed)."""
    lines = path.read_text().splitlines()
    return [
        c for line in lines if (record := json.loads(line))["split"] == "train" for c in record["captions"] if c.strip()
    ]


def pretrain_language_model(
    decoder: CaptionDecoder, rows: list[list[int]], shape: tuple[int, int, int], args: argparse.Namespace, rng: Any
) -> list[dict[str, float]]:
    """Caption-side pre-training: the decoder learns to write captions with an empty image memory.

    ``shape`` is (pooled width, visual tokens, token width) of the image features; the memory is
    all zeros, so only the word-to-word part of the decoder learns here. Same loss and optimiser
    as the image-conditioned training that follows.
    """
    pooled_dim, n_tokens, token_dim = shape
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=100)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=args.label_smoothing)
    log = []
    for epoch in range(1, args.pretrain_epochs + 1):
        decoder.train()
        order = rng.permutation(len(rows))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            ids = pad([rows[i] for i in order[start : start + args.batch_size]])
            memory = decoder.memory(torch.zeros(len(ids), pooled_dim), torch.zeros(len(ids), n_tokens, token_dim))
            total += training_step(decoder, memory, ids, loss_fn, optimizer, warmup) * len(ids)
        log.append({"pretrain_epoch": epoch, "loss": total / len(rows)})
        print(json.dumps(log[-1]), flush=True)
    return log


def generate(decoder: CaptionDecoder, vocabulary: list[str], pooled: torch.Tensor, tokens: torch.Tensor, beams: int):
    """Captions of feature rows, in batches."""
    decoder.eval()
    out: list[str] = []
    for start in range(0, len(pooled), 256):
        memory = decoder.memory(pooled[start : start + 256], tokens[start : start + 256])
        out += [detokenize([vocabulary[i] for i in ids]) for ids in decoder.generate(memory, beams)]
    return out


def nearest_neighbour_captions(
    train_pooled: torch.Tensor, train_captions: list[list[str]], query: torch.Tensor, k: int = 5
) -> list[str]:
    """The consensus caption of the k most similar training images (Devlin et al., 2015).

    Among the captions of the k nearest training images (cosine of pooled embeddings), the
    one with the highest mean BLEU-4 against the others: a strong baseline on datasets whose
    captions repeat, as UCM-Captions' do.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    similarity = query @ train_pooled.T
    neighbours = similarity.topk(k, dim=1).indices.tolist()
    bleu = Bleu(4)
    chosen = []
    for row in neighbours:
        pool = [c for i in row for c in train_captions[i]]
        best, best_score = pool[0], -1.0
        for j, candidate in enumerate(pool):
            others = [" ".join(tokenize(c)) for m, c in enumerate(pool) if m != j]
            score = bleu.compute_score({0: others}, {0: [" ".join(tokenize(candidate))]}, verbose=0)[0][3]
            if score > best_score:
                best, best_score = candidate, score
        chosen.append(best)
    return chosen


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select on val, score on test; write the weights file and return the report."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    clip = load_model("mini", "cpu")
    sets = {split: load_caption_set(args.captions, split) for split in ("train", "val", "test")}
    started = time.monotonic()
    feats = cached_features(clip, sets, args.feature_cache)
    feature_seconds = time.monotonic() - started
    vocabulary = build_vocabulary(sets["train"].captions, args.min_count)
    index = {w: i for i, w in enumerate(vocabulary)}
    pooled_dim, (_, token_dim) = feats["train"][0].shape[-1], feats["train"][1].shape[-2:]
    decoder = CaptionDecoder(len(vocabulary), token_dim, pooled_dim, args.width, args.layers, args.heads)
    pairs = [(i, encode(c, index, decoder.max_length)) for i, group in enumerate(sets["train"].captions) for c in group]
    pretraining: dict[str, Any] = {}
    if args.pretrain_text:
        # Other datasets' captions in this vocabulary; a caption with a word outside it is left out, so that
        # the decoder learns no UNK habits.
        rows = [encode(c, index, decoder.max_length) for f in args.pretrain_text for c in train_split_captions(f)]
        kept = [row for row in rows if UNK not in row]
        shape = (pooled_dim, int(feats["train"][1].shape[-2]), token_dim)
        pretraining = {
            "files": [str(f) for f in args.pretrain_text],
            "captions": len(rows),
            "kept_in_vocabulary": len(kept),
            "history": pretrain_language_model(decoder, kept, shape, args, rng),
        }
    steps_per_epoch = (len(pairs) + args.batch_size - 1) // args.batch_size
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=steps_per_epoch)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps_per_epoch * (args.epochs - 1))
    schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [steps_per_epoch])
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=args.label_smoothing)
    history, best = [], {"cider": -1.0, "epoch": 0, "state": None}
    train_pooled, train_tokens = feats["train"]
    for epoch in range(1, args.epochs + 1):
        decoder.train()
        order = rng.permutation(len(pairs))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            chosen = [pairs[i] for i in order[start : start + args.batch_size]]
            images = torch.tensor([i for i, _ in chosen])
            views = torch.from_numpy(rng.integers(0, 8, len(chosen)))
            memory = decoder.memory(train_pooled[views, images], train_tokens[views, images])
            ids = pad([seq for _, seq in chosen])
            total += training_step(decoder, memory, ids, loss_fn, optimizer, schedule) * len(chosen)
        entry: dict[str, Any] = {"epoch": epoch, "loss": total / len(pairs), "elapsed_s": time.monotonic() - started}
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            captions = generate(decoder, vocabulary, feats["val"][0][0], feats["val"][1][0], beams=1)
            scores = caption_scores(captions, sets["val"].captions)
            entry["val_greedy"] = scores
            if scores["CIDEr"] > best["cider"]:
                best = {
                    "cider": scores["CIDEr"],
                    "epoch": epoch,
                    "state": {k: v.clone() for k, v in decoder.state_dict().items()},
                }
        history.append(entry)
        print(
            json.dumps(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items() if k != "val_greedy"}
            ),
            entry.get("val_greedy", {}).get("CIDEr"),
            flush=True,
        )
    decoder.load_state_dict(best["state"])
    decoder.eval()
    test_pooled, test_tokens = feats["test"][0][0], feats["test"][1][0]
    val_beam = caption_scores(
        generate(decoder, vocabulary, feats["val"][0][0], feats["val"][1][0], args.beams), sets["val"].captions
    )
    test_captions = generate(decoder, vocabulary, test_pooled, test_tokens, args.beams)
    test_scores = caption_scores(test_captions, sets["test"].captions)
    nn_captions = nearest_neighbour_captions(train_pooled[0], sets["train"].captions, test_pooled)
    nn_scores = caption_scores(nn_captions, sets["test"].captions)
    tensors, metadata = state_for_file(decoder, vocabulary, clip.fingerprint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(args.out)
    return {
        "command": "training/train_mini_captioner.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {args.threads} torch threads, CPU".strip(),
        "splits": {s: {"images": len(d.images), "captions": len(d.texts)} for s, d in sets.items()},
        "image_model": {"name": "mini", "fingerprint": clip.fingerprint, "frozen": True},
        "decoder": {**decoder.config, "parameters": sum(p.numel() for p in decoder.parameters())},
        "vocabulary": len(vocabulary),
        "feature_seconds": feature_seconds,
        "train_seconds": time.monotonic() - started - feature_seconds,
        "best_epoch": best["epoch"],
        "caption_pretraining": pretraining or None,
        "val_beam": val_beam,
        "test": test_scores,
        "test_nearest_neighbour": nn_scores,
        "test_examples": [
            {"image": str(p), "generated": c, "nearest_neighbour": n, "reference": r[0]}
            for p, c, n, r in list(zip(sets["test"].images, test_captions, nn_captions, sets["test"].captions))[::21]
        ],
        "history": history,
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captions", type=Path, help="UCM-Captions jsonl (image paths relative to it)")
    parser.add_argument("--out", type=Path, default=Path("geobimors/models/mini/captioner.safetensors"))
    parser.add_argument("--log", type=Path, default=Path("docs/benchmarks/captioner.json"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--pretrain-text",
        type=Path,
        nargs="*",
        default=[],
        help="caption jsonl files (RSICD, RSITMD, Sydney) whose train-split captions pre-train the decoder as a "
        "language model, without images, before UCM-Captions",
    )
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument(
        "--feature-cache",
        type=Path,
        default=Path("benchmarks/out/ucm-mini-features.safetensors"),
        help="image features of the frozen tower, reused while its fingerprint matches",
    )
    args = parser.parse_args()
    report = train(args)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("val_beam", "test", "test_nearest_neighbour"):
        print(name, {k: round(v, 4) for k, v in report[name].items()})


if __name__ == "__main__":
    main()
