"""Chip captions: BLIP-2 and BLIP through transformers, ``none``, and an on-disk cache.

A captioner is named by a Hugging Face id or local folder; its kind (BLIP-2 or
BLIP) is read from the checkpoint's config. Captions are cached by the chip's
content hash, the captioner id and the generation settings, so re-runs,
re-labelling and training never caption the same chip twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geobimors.errors import ModelError
from geobimors.files import default_cache_dir
from geobimors.models.clip import describe_load_failure, resolve_device
from geobimors.models.hf import quiet_transformers

NO_CAPTIONER = "none"
MINI_CAPTIONER = "mini"
PAPER_CAPTIONER = "Salesforce/blip2-flan-t5-xl"
CPU_CAPTIONER = "Salesforce/blip-image-captioning-base"


def hub_model_available(name: str) -> bool:
    """True when a Hugging Face checkpoint is a local folder or already in the local hub cache."""
    if Path(name).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the hub library cannot parse is not available either
        return False


def default_captioner() -> tuple[str, str | None]:
    """The captioner used when none is named, and a note when it is not the usual one.

    BLIP base when it is at hand (a local folder or the hub cache); otherwise the bundled
    ``mini`` captioner, which works offline, rather than minutes of download retries.
    """
    if hub_model_available(CPU_CAPTIONER):
        return CPU_CAPTIONER, None
    return MINI_CAPTIONER, f"captioner: the bundled 'mini' ({CPU_CAPTIONER} is not downloaded; name it to fetch it)"


@dataclass(frozen=True)
class CaptionerSpec:
    """A captioner and its generation settings (part of the cache key).

    Attributes:
        name: Hugging Face id or folder of a BLIP-2 or BLIP checkpoint, ``mini`` (the bundled
            offline captioner) or ``none``.
        max_new_tokens: caption length limit (paper: 16).
        num_beams: beam search width (paper: 4).
        prompt: optional text prompt (BLIP-2 / BLIP conditional captioning).
    """

    name: str = CPU_CAPTIONER
    max_new_tokens: int = 16
    num_beams: int = 4
    prompt: str = ""

    @property
    def is_none(self) -> bool:
        """True when no captioner runs (the head learns an empty-caption embedding)."""
        return self.name == NO_CAPTIONER

    def key(self) -> str:
        """Cache key prefix: captioner id and generation settings."""
        return json.dumps(asdict(self), sort_keys=True)


def chip_hash(chip: np.ndarray) -> str:
    """Content hash of a chip (its pixels, shape and dtype)."""
    digest = hashlib.sha256(np.ascontiguousarray(chip).tobytes())
    digest.update(f"{chip.shape}{chip.dtype}".encode())
    return digest.hexdigest()


class CaptionCache:
    """Captions in a SQLite file, keyed by captioner settings and chip hash.

    Args:
        path: the SQLite file (created on first use).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_cache_dir() / "captions.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS captions (key TEXT PRIMARY KEY, caption TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")  # several processes may caption at once
        return db

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        """Cached captions of the keys that are present."""
        found: dict[str, str] = {}
        with self._lock, self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(db.execute(f"SELECT key, caption FROM captions WHERE key IN ({marks})", chunk))
        return found

    def put(self, items: dict[str, str]) -> None:
        """Store captions."""
        with self._lock, self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO captions (key, caption) VALUES (?, ?)", items.items())


class Captioner:
    """Generates captions of uint8 chips with a BLIP-2 or BLIP checkpoint, or the bundled mini captioner.

    Args:
        spec: the captioner and generation settings.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` weights (half precision on GPU).
        cache: caption cache (``None`` disables caching).
    """

    def __init__(
        self, spec: CaptionerSpec, device: str = "auto", precision: str = "fp32", cache: CaptionCache | None = None
    ) -> None:
        if spec.is_none:
            raise ModelError("captioner 'none' generates no captions")
        self.spec = spec
        self.device = resolve_device(device)
        self.cache = cache
        self.calls = 0  # model calls, for tests and summaries
        self.cache_hits = 0
        self._mini: Any = None
        self.weights_id = spec.name  # part of the cache key: captions of other weights are not reused
        if spec.name == MINI_CAPTIONER:
            from geobimors.models.mini.captioner import MiniCaptioner

            self._mini = MiniCaptioner(device, precision, beams=spec.num_beams)
            self.kind = MINI_CAPTIONER
            self.weights_id = self._mini.fingerprint
            return
        from transformers import AutoConfig, AutoProcessor

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        try:
            config = AutoConfig.from_pretrained(spec.name)
            if config.model_type == "blip-2":
                from transformers import Blip2ForConditionalGeneration as Model
            elif config.model_type == "blip":
                from transformers import BlipForConditionalGeneration as Model  # type: ignore[assignment]
            else:
                raise ModelError(
                    f"captioner {spec.name!r} is a {config.model_type!r} model; use a BLIP-2 or BLIP captioning "
                    f"checkpoint (e.g. {PAPER_CAPTIONER} or {CPU_CAPTIONER}), --captioner mini or --captioner none"
                )
            with quiet_transformers():
                self.processor: Any = AutoProcessor.from_pretrained(spec.name)
                self.model: Any = Model.from_pretrained(spec.name, dtype=dtype).eval().to(self.device)
        except ModelError:
            raise
        except Exception as exc:
            raise describe_load_failure(f"captioner {spec.name}", exc) from exc
        self.kind = config.model_type
        # The hub revision where there is one; a local checkpoint is known by its path only.
        self.weights_id = getattr(config, "_commit_hash", None) or spec.name

    @torch.no_grad()
    def _generate(self, images: list[np.ndarray]) -> list[str]:
        self.calls += 1
        if self._mini is not None:
            return self._mini.generate(images)
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.spec.prompt:
            kwargs["text"] = [self.spec.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(
            **inputs, max_new_tokens=self.spec.max_new_tokens, num_beams=self.spec.num_beams, do_sample=False
        )
        texts = self.processor.batch_decode(output, skip_special_tokens=True)
        return [
            " ".join(text.replace(self.spec.prompt, "", 1).split()) if self.spec.prompt else " ".join(text.split())
            for text in texts
        ]

    def caption(self, chips: np.ndarray | Sequence[np.ndarray], batch_size: int = 16) -> list[str]:
        """Captions of (H, W, 3) uint8 chips, from the cache where possible."""

        def generate(index: list[int]) -> list[str]:
            texts: list[str] = []
            for start in range(0, len(index), batch_size):
                texts += self._generate([chips[i] for i in index[start : start + batch_size]])
            return texts

        return self._through_cache(chips, generate)

    def caption_from_features(self, chips: np.ndarray, pooled: torch.Tensor, tokens: torch.Tensor) -> list[str]:
        """Captions of chips whose bundled-tower features (pooled, tokens) are already computed (``mini`` only).

        A map that classifies with the bundled model passes its own image pass here, so captions
        cost the decoder alone. Cached like :meth:`caption` (the same keys: the same captions).
        """
        mini = self._mini
        if mini is None:
            raise ModelError(f"captioner {self.spec.name} reads images, not the bundled model's features")

        def generate(index: list[int]) -> list[str]:
            self.calls += 1
            rows = torch.as_tensor(index, device=pooled.device)
            return mini.caption_features(pooled[rows], tokens[rows])

        return self._through_cache(chips, generate)

    def _through_cache(
        self, chips: np.ndarray | Sequence[np.ndarray], generate: Callable[[list[int]], list[str]]
    ) -> list[str]:
        """Captions from the cache, and ``generate(indexes)`` for the chips it does not hold."""
        keys = [f"{self.spec.key()}|{self.weights_id}|{chip_hash(chip)}" for chip in chips]
        found = self.cache.get(keys) if self.cache is not None else {}
        self.cache_hits += len(found)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            new = dict(zip([keys[i] for i in missing], generate(missing)))
            if self.cache is not None:
                self.cache.put(new)
            found.update(new)
        return [found[key] for key in keys]


_CAPTIONERS: dict[tuple[CaptionerSpec, str, str], Captioner] = {}
_LOCK = threading.Lock()


def load_captioner(spec: CaptionerSpec, device: str = "auto", precision: str = "fp32") -> Captioner:
    """A captioner with the default on-disk cache, loaded once per process."""
    with _LOCK:
        key = (spec, device, precision)
        if key not in _CAPTIONERS:
            _CAPTIONERS[key] = Captioner(spec, device, precision, CaptionCache())
        return _CAPTIONERS[key]
