"""Benchmark of batched, EOT-truncated prompt encoding (issue 4) against the official per-image loop.

    python benchmarks/bench_prompts.py [--json docs/benchmarks/prompts.json]

CoCoOp-style heads (and BiMoRS) build C class prompts per image. The official
code encodes them image by image at the full 77-token context. geobimors encodes
all B x C prompts in one call, truncated to the longest prompt in the batch
(exact under CLIP's causal mask). Both run the same frozen ViT-B/16 text
transformer (random weights: the cost is the same) on CPU, for a forward pass
(inference) and a forward + backward pass (a training step), with 10 classes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from geobimors.labels import Label
from geobimors.models.clip import load_model
from geobimors.models.mini.classes import PLAIN_CLASS_NAMES
from geobimors.models.text import PromptTextEncoder

from common import ROOT, machine

CLASSES = list(PLAIN_CLASS_NAMES.values())  # the ten EuroSAT class names


def official_loop(encoder: PromptTextEncoder, prompts, context: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per image, C prompts at the full context length (the official implementation's loop)."""
    out = []
    for ctx in context:
        embeddings = encoder.assemble(prompts, ctx)
        out.append(encoder.encode(embeddings, prompts.tokens, truncate=False))
    return torch.stack(out)


def batched(encoder: PromptTextEncoder, prompts, context: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    b = context.shape[0]
    embeddings = encoder.assemble(prompts, context)
    return encoder.encode(embeddings, prompts.tokens.repeat(b, 1)).view(b, len(CLASSES), -1)


def timed(fn, repeats: int, backward: bool) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if backward:
            out.float().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "prompts.json")
    parser.add_argument("--model", default="ViT-B-16:random")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clip = load_model(args.model, device="cpu")
    encoder = PromptTextEncoder(clip)
    prompts = encoder.class_prompts([Label(c, c).prompt for c in CLASSES], 4)
    results = []
    for batch in (4, 32):
        for backward in (False, True):
            context = (torch.randn(batch, 4, encoder.width) * 0.02).requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                diff = (official_loop(encoder, prompts, context) - batched(encoder, prompts, context)).abs().max()
                loop_s = timed(lambda c=context: official_loop(encoder, prompts, c), args.repeats, backward)
                ours_s = timed(lambda c=context: batched(encoder, prompts, c), args.repeats, backward)
            row = {
                "batch": batch,
                "classes": len(CLASSES),
                "pass": "forward+backward" if backward else "forward",
                "official_loop_s": loop_s,
                "batched_truncated_s": ours_s,
                "speedup": loop_s / ours_s,
                "max_abs_difference": float(diff.detach()),
                "truncated_length": prompts.max_length,
                "full_length": int(prompts.tokens.shape[1]),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "model": args.model, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
