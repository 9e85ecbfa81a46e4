"""CLIP models through open_clip: names, hub ids, local checkpoints, bundled models.

A model is named by one string (the ``--model`` option):

* ``ARCH:TAG`` -- an open_clip architecture with a pretrained tag, e.g.
  ``ViT-B-16:openai`` or ``ViT-B-32:laion2b_s34b_b79k``;
* ``ARCH:/path/to/checkpoint`` -- local weights (``.safetensors``, ``.pt``,
  ``.bin``), e.g. RemoteCLIP's ``ViT-B-32:RemoteCLIP-ViT-B-32.pt``;
* ``ARCH:hf-hub:ORG/REPO/FILE`` -- one weights file from a Hugging Face repo,
  e.g. ``ViT-B-32:hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt``;
* ``hf-hub:ORG/REPO`` -- an open_clip repo on the Hugging Face hub;
* ``local-dir:/path`` or a directory -- ``open_clip_config.json`` + weights;
* ``ARCH:random`` -- untrained weights (benchmarks, tests);
* a bundled model name (``mini``), which works offline.

Checkpoints are never unpickled unsafely: safetensors, or ``torch.load`` with
``weights_only=True``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import pickle
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geobimors.errors import ModelError
from geobimors.files import default_cache_dir
from geobimors.models.views import check_views, encode_views

RANDOM_WEIGHTS = ("random", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
#: Allowed ``--tta`` values: 1 (off); 2 (+ the mirror image); 4 (the four 90-degree turns); 8 (turns x mirror).
TTA_VIEWS = (1, 2, 4, 8)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from its name.

    Attributes:
        name: the name as the user gave it.
        kind: ``openclip`` (ARCH + tag/file/random), ``hf-hub``, ``local-dir``
            or ``bundled``.
        arch: open_clip architecture (``openclip`` kind), bundled name, or the
            hub id / directory.
        weights: pretrained tag, local file, ``hf-hub:ORG/REPO/FILE``, or
            ``None`` for random weights.
    """

    name: str
    kind: str
    arch: str
    weights: str | None


def _open_clip() -> Any:
    import open_clip

    return open_clip


def resolve_model_name(name: str) -> ModelSource:
    """Resolve a ``--model`` name into a :class:`ModelSource`.

    Raises:
        ModelError: for unknown architectures or tags, missing files, or an
            architecture given without weights.
    """
    from geobimors.models import bundled

    name = name.strip()
    if not name:
        raise ModelError("--model is empty; pass e.g. mini, ViT-B-16:openai or hf-hub:ORG/REPO")
    if name in bundled.BUNDLED_MODELS:
        return ModelSource(name, "bundled", name, None)
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :].strip("/")
        if repo.count("/") != 1:
            raise ModelError(
                f"--model {name}: hf-hub ids are hf-hub:ORG/REPO for open_clip repos; "
                "for one file in a repo give the architecture: ARCH:hf-hub:ORG/REPO/FILE"
            )
        return ModelSource(name, "hf-hub", repo, None)
    if name.startswith("local-dir:") or Path(name).expanduser().is_dir():
        directory = Path(name.removeprefix("local-dir:")).expanduser()
        if not (directory / "open_clip_config.json").is_file():
            raise ModelError(
                f"--model {name}: {directory} has no open_clip_config.json; a model directory needs "
                "the config and a weights file, or give ARCH:/path/to/weights"
            )
        return ModelSource(name, "local-dir", str(directory.absolute()), None)

    open_clip = _open_clip()
    archs = open_clip.list_models()
    arch, sep, weights = name.partition(":")
    if arch not in archs:
        if Path(name).expanduser().is_file():
            raise ModelError(
                f"--model {name}: a checkpoint file needs its architecture, e.g. ViT-B-32:{name} "
                "(see open_clip's list of architectures)"
            )
        close = difflib.get_close_matches(arch, archs + list(bundled.BUNDLED_MODELS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"unknown model {name!r}: {hint}use a bundled model ({', '.join(bundled.BUNDLED_MODELS)}), "
            "ARCH:TAG (e.g. ViT-B-16:openai), ARCH:/path/to/weights, or hf-hub:ORG/REPO"
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not sep or not weights:
        shown = ", ".join(tags[:6]) or "none"
        raise ModelError(
            f"--model {arch} needs weights: {arch}:TAG (tags: {shown}), {arch}:/path/to/weights, "
            f"or {arch}:random for untrained weights"
        )
    if weights in RANDOM_WEIGHTS:
        return ModelSource(name, "openclip", arch, None)
    if weights.startswith("hf-hub:"):
        if weights[len("hf-hub:") :].strip("/").count("/") < 2:
            raise ModelError(f"--model {name}: a hub file is ARCH:hf-hub:ORG/REPO/FILE")
        return ModelSource(name, "openclip", arch, weights)
    if weights in tags or open_clip.pretrained.is_pretrained_cfg(arch, weights):
        return ModelSource(name, "openclip", arch, weights)
    path = Path(weights).expanduser()
    if path.is_file():
        return ModelSource(name, "openclip", arch, str(path.absolute()))
    if any(sep_ in weights for sep_ in ("/", os.sep, ".")):
        raise ModelError(f"--model {name}: checkpoint file not found: {weights}")
    raise ModelError(
        f"--model {name}: {weights!r} is not a pretrained tag of {arch} (tags: {', '.join(tags) or 'none'}) "
        "nor a checkpoint file"
    )


def describe_load_failure(name: str, exc: BaseException) -> ModelError:
    """Turn an exception raised while loading weights into a one-line error."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    names = " ".join(type(e).__name__ for e in chain)
    if any(isinstance(e, pickle.UnpicklingError) for e in chain) or "Weights only load failed" in text:
        return ModelError(
            f"refusing to load weights for {name!r}: the checkpoint holds pickled Python objects that could run "
            "code; convert it to safetensors or a plain state_dict saved by torch.save"
        )
    if (
        "LocalEntryNotFound" in names
        or "OfflineModeIsEnabled" in names
        or "ConnectionError" in names
        or "cannot find the requested files in the local cache" in text
        or "Failed to download" in text
        or "HF Hub" in text
    ):
        return ModelError(
            f"could not obtain weights for {name!r}: not in the local Hugging Face cache and the hub "
            "cannot be reached. Run once with network access (or copy the cache, HF_HOME), or download the "
            "checkpoint and pass ARCH:/path/to/weights; set HF_HUB_OFFLINE=1 to skip network retries"
        )
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        return ModelError(
            f"weights for {name!r} do not fit the architecture ({_first_line(chain[-1])}); check ARCH in ARCH:weights"
        )
    return ModelError(
        f"could not load weights for {name!r}: {_first_line(chain[0])} (the file may be truncated or corrupt)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` requires CUDA.

    Raises:
        ModelError: for unknown devices or CUDA without a GPU.
    """
    device = device.lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError("--device cuda: no CUDA GPU is available to torch; use --device cpu (or auto)")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ModelError(f"--device {device!r}: use auto, cpu or cuda")


def check_tta(views: int) -> int:
    """Validate ``--tta``.

    Raises:
        ModelError: for a count other than 1, 2, 4 or 8.
    """
    if views not in TTA_VIEWS:
        raise ModelError(
            f"--tta {views}: use 1 (off), 2 (+ the mirror image), 4 (the four 90-degree turns) or 8 (turns and mirror)"
        )
    return views


def dihedral_views(images: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The first ``views`` of the 8 turns and mirror images of (N, C, H, W) images, the original first.

    Overhead imagery has no "up": a chip turned or mirrored shows the same ground. 2 views are the
    chip and its mirror image, 4 its four 90-degree turns, 8 the turns of both.
    """
    check_tta(views)
    if views == 2:
        return [images, images.flip(-1)]
    turns = [torch.rot90(images, k, (-2, -1)) for k in range(4)]
    if views == 8:
        mirrored = images.flip(-1)
        turns += [torch.rot90(mirrored, k, (-2, -1)) for k in range(4)]
    return turns[:views]


DEFAULT_VIEW_BLEND = 0.5
"""Classification's weight of the sub-views against the full view (chosen on the val splits; docs/benchmarks.md)."""


def check_precision(precision: str, device: torch.device) -> str:
    """Validate ``--precision`` for a device.

    Raises:
        ModelError: for unknown precisions or fp16 on CPU.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"--precision {precision!r}: use fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ModelError("--precision fp16 needs a CUDA GPU; on CPU use --precision bf16 (or fp32)")
    return precision


class ClipModel:
    """A loaded CLIP model with batched, device-side preprocessing.

    Attributes:
        name: the model name as given.
        model: the open_clip model (frozen, eval mode).
        tokenizer: the model's tokenizer.
        device: where the model runs.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast.
        image_size: model input size (height, width).
        native_gsd: ground resolution (m/px) the model was trained at, if known.
        default_chip_size: chip size (px at ``native_gsd``) the model expects, if known.
        tta: test-time augmentation: image features are the mean over this many turned and
            mirrored views of each image (:func:`dihedral_views`; 1: off). Set by :meth:`with_tta`.
        views: detail views of raw chips in :meth:`embed_chips` (:func:`~geobimors.models.views.view_crops`; 1: off).
        view_blend: the sub-views' weight against the full view in :meth:`embed_chips`.
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        device: torch.device,
        precision: str,
        native_gsd: float | None = None,
        default_chip_size: int | None = None,
    ) -> None:
        self.name = name
        self.model: Any = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        cfg = _preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        mean = torch.tensor(cfg["mean"], dtype=torch.float32)
        std = torch.tensor(cfg["std"], dtype=torch.float32)
        self._mean = mean.view(1, 3, 1, 1).to(device)
        self._std = std.view(1, 3, 1, 1).to(device)
        self.native_gsd = native_gsd
        self.default_chip_size = default_chip_size
        self._fingerprint: str | None = None
        # Set by loaders that can name their weights cheaply: text features are then cached on disk.
        self.text_cache_key: str | None = None
        self.tta = 1
        self.views = 1
        self.view_blend = DEFAULT_VIEW_BLEND
        # The phrasing groups the text side was trained on, when the model declares them (bundled
        # models): zero-shot labels outside them are anchored (geobimors.models.anchors).
        self.trained_vocabulary: list[list[str]] | None = None

    def with_views(self, views: int, view_blend: float | None = None) -> ClipModel:
        """The same model (weights not copied) whose :meth:`embed_chips` also reads each chip's sub-views.

        Args:
            views: 1, 5 or 6 (:func:`~geobimors.models.views.view_crops`).
            view_blend: the sub-views' weight against the full view (default :data:`DEFAULT_VIEW_BLEND`).
        """
        check_views(views, view_blend)
        blend = DEFAULT_VIEW_BLEND if view_blend is None else view_blend
        if (views, blend) == (self.views, self.view_blend):
            return self
        other = copy.copy(self)
        other.views, other.view_blend = views, blend
        return other

    @torch.no_grad()
    def embed_chips(self, chips: np.ndarray) -> torch.Tensor:
        """L2-normalised image features (float32) of raw (N, H, W, 3) uint8 chips.

        With :attr:`views` 5 or 6, the features of the full chip blended with the mean features of
        its quadrants (and centre crop) by :attr:`view_blend`: each sub-view reaches the model at
        twice the detail of the full chip, which helps when chips hold more pixels than the model's
        input (aerial photos read at 64 px).
        """
        features = encode_views(self, chips, self.views)
        if self.views == 1:
            return features[:, 0]
        blended = (1.0 - self.view_blend) * features[:, 0] + self.view_blend * features[:, 1:].mean(1)
        return F.normalize(blended, dim=-1)

    def with_tta(self, views: int) -> ClipModel:
        """The same model (same weights, not copied) averaging image features over ``views`` turned/mirrored views.

        Raises:
            ModelError: for a count other than 1, 2, 4 or 8.
        """
        if check_tta(views) == self.tta:
            return self
        other = copy.copy(self)
        other.tta = views
        return other

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (exp of ``logit_scale``)."""
        return float(self.model.logit_scale.exp().clamp(max=100.0))

    def autocast(self) -> torch.autocast:
        """Autocast context for the chosen precision (disabled for fp32)."""
        dtype = _AUTOCAST_DTYPES.get(self.precision, torch.bfloat16)
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def preprocess(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Turn (N, H, W, 3) uint8 chips into normalised model input on the device.

        Chips are resized to the model's input size (square chips: the same as
        open_clip's resize + centre crop) and normalised with the model's mean/std.
        """
        x = torch.as_tensor(chips).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode=self.interpolation, align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return self.normalize(x)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise (N, 3, H, W) float images in 0..1 with the model's mean and std."""
        return (images - self._mean) / self._std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (float32) of preprocessed images.

        With :attr:`tta` views, the normalised mean of the views' normalised features.
        """
        if self.tta > 1:
            return self._mean_over_views([self._encode(v) for v in dihedral_views(images, self.tta)])
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            features = self.model.encode_image(images)
        return F.normalize(features.float(), dim=-1)

    @staticmethod
    def _mean_over_views(features: list[torch.Tensor]) -> torch.Tensor:
        return F.normalize(torch.stack(features).mean(0), dim=-1)

    @torch.no_grad()
    def encode_images_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features and the visual tokens they were pooled from, in one forward pass.

        Tokens are the vision transformer's output tokens (ViTs), or the positions
        of the last feature map (CNNs), as (N, T, W) float32. With :attr:`tta` views, the
        features are averaged over the views as in :meth:`encode_images`; the tokens, whose
        positions turn with the image, are the original view's.

        Returns:
            L2-normalised features (N, E) and tokens (N, T, W).

        Raises:
            ModelError: for image towers that expose no tokens.
        """
        visual = self.model.visual
        captured: list[torch.Tensor] = []
        with self.autocast():
            if hasattr(visual, "forward_with_tokens"):  # the bundled model's plain-torch tower
                features, feature_map = visual.forward_with_tokens(images)
                captured.append(feature_map)
            elif _is_timm_tower(visual):
                feature_map = visual.trunk.forward_features(images)
                features = visual.head(visual.trunk.forward_head(feature_map))
                captured.append(feature_map)
            elif hasattr(visual, "transformer") or getattr(visual, "attnpool", None) is not None:
                if hasattr(visual, "transformer"):
                    hook = visual.transformer.register_forward_hook(lambda m, i, o: captured.append(o))
                else:
                    hook = visual.attnpool.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
                try:
                    features = visual(images)
                finally:
                    hook.remove()
            else:
                raise ModelError(
                    f"model {self.name!r}: its image tower ({type(visual).__name__}) exposes no visual tokens, "
                    "which CoCoOp-style and BiMoRS heads need"
                )
        tokens = captured[-1].float()
        if tokens.dim() == 4:  # (N, C, H, W) feature map -> (N, H*W, C) positions
            tokens = tokens.flatten(2).transpose(1, 2)
        pooled = F.normalize(features.float(), dim=-1)
        if self.tta > 1:
            pooled = self._mean_over_views([pooled] + [self._encode(v) for v in dihedral_views(images, self.tta)[1:]])
        return pooled, tokens

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text features (float32), encoded in batches.

        With a :attr:`text_cache_key`, the features of the same texts (same weights, precision
        and device type) come from the on-disk cache (``$GEOBIMORS_CACHE_DIR/text-features``).
        """
        path = self._text_cache_path(texts)
        cached = _read_text_cache(path, len(texts)) if path is not None else None
        if cached is not None:
            return cached.to(self.device)
        features = self._encode_texts(texts, batch_size)
        if path is not None:
            _write_text_cache(path, features)
        return features

    def _text_cache_path(self, texts: Sequence[str]) -> Path | None:
        if self.text_cache_key is None or not texts:
            return None
        digest = hashlib.sha256(f"{self.text_cache_key}\0{self.precision}\0{self.device.type}".encode())
        for text in texts:
            digest.update(b"\0" + text.encode())
        return default_cache_dir() / "text-features" / f"{digest.hexdigest()[:32]}.safetensors"

    def _encode_texts(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with self.autocast():
                features = self.model.encode_text(tokens)
            out.append(F.normalize(features.float(), dim=-1))
        return torch.cat(out)

    def overflowing(self, texts: Sequence[str]) -> list[bool]:
        """Which texts fill the text encoder's whole context (and are cut at its end)."""
        out: list[bool] = []
        for start in range(0, len(texts), 256):
            tokens = self.tokenizer(list(texts[start : start + 256]))
            out += (tokens[:, -1] != 0).tolist()
        return out

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the model's parameter names, shapes and values (short hex).

        Identifies the exact weights a trained head was made for.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def _preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """Input size, mean, std and interpolation of a model (open_clip's defaults where unset).

    A model that carries a complete ``visual.preprocess_cfg`` (the bundled model's plain-torch
    path) needs no open_clip import.
    """
    cfg = dict(getattr(getattr(model, "visual", model), "preprocess_cfg", None) or {})
    if {"size", "mean", "std"} <= cfg.keys():
        return cfg
    open_clip = _open_clip()
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    cfg.setdefault("mean", open_clip.OPENAI_DATASET_MEAN)
    cfg.setdefault("std", open_clip.OPENAI_DATASET_STD)
    return cfg


def _is_timm_tower(visual: Any) -> bool:
    """Whether an image tower is open_clip's timm adapter (imports open_clip only if it is loaded)."""
    import sys

    module = sys.modules.get("open_clip.timm_model")
    return module is not None and isinstance(visual, module.TimmModel)


def _read_text_cache(path: Path, count: int) -> torch.Tensor | None:
    """Cached text features (count, E), or ``None`` when absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        features = load_file(str(path)).get("features")
    except (OSError, SafetensorError):
        return None
    if features is None or features.dim() != 2 or features.shape[0] != count or features.dtype != torch.float32:
        return None
    return features


def _write_text_cache(path: Path, features: torch.Tensor) -> None:
    """Store text features atomically; a cache that cannot be written is skipped."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.detach().to("cpu", torch.float32).contiguous()}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _tokenizer_for(open_clip: Any, source: ModelSource) -> Any:
    if source.kind == "hf-hub":
        return open_clip.get_tokenizer(f"hf-hub:{source.arch}")
    if source.kind == "local-dir":
        return open_clip.get_tokenizer(f"local-dir:{source.arch}")
    return open_clip.get_tokenizer(source.arch)


def _download_hub_file(spec: str) -> str:
    from huggingface_hub import hf_hub_download

    org, repo, filename = spec[len("hf-hub:") :].strip("/").split("/", 2)
    return str(hf_hub_download(repo_id=f"{org}/{repo}", filename=filename))


def model_seed(name: str) -> int:
    """A seed derived from a model name (stable across runs, processes and machines)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _build(source: ModelSource, device: torch.device, precision: str) -> ClipModel:
    from geobimors.models import bundled

    if source.kind == "bundled":
        return bundled.load_bundled(source.arch, device, precision)
    open_clip = _open_clip()
    kwargs: dict[str, Any] = {"device": "cpu", "weights_only": True, "pretrained_text": False}
    if source.kind in ("hf-hub", "local-dir"):
        with torch.random.fork_rng(devices=[]):  # reproducible init of anything the weights leave out
            torch.manual_seed(model_seed(source.name))
            model = open_clip.create_model(f"{source.kind}:{source.arch}", **kwargs)
    else:
        weights = source.weights
        if weights is not None and weights.startswith("hf-hub:"):
            weights = _download_hub_file(weights)
        tag_cfg = open_clip.get_pretrained_cfg(source.arch, weights) if weights else {}
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        # open_clip merges the tag's preprocessing (mean, std, size) into the model itself.
        # Seeded from the architecture: ARCH:random gives the same weights in every run and
        # process (resumed and distributed runs compare with uninterrupted ones), and any
        # layer a checkpoint leaves at its initialisation is reproducible too.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_seed(f"{source.arch}:{'random' if weights is None else weights}"))
            model = open_clip.create_model(
                source.arch, pretrained=weights, require_pretrained=weights is not None, **kwargs
            )
    return ClipModel(source.name, model, _tokenizer_for(open_clip, source), device, precision)


_CACHE: dict[tuple[str, str, str], ClipModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(name: str, device: str = "auto", precision: str = "fp32", tta: int = 1) -> ClipModel:
    """Load a CLIP model once per process (later calls return the cached model).

    Args:
        name: model name (see module docs).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        tta: test-time augmentation views (1, 2, 4 or 8; see :meth:`ClipModel.with_tta`); the
            weights are loaded once whatever the count.

    Returns:
        The loaded model.

    Raises:
        ModelError: if the name is unknown or the weights cannot be obtained or loaded.
    """
    check_tta(tta)
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    key = (name, str(torch_device), precision)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached.with_tta(tta)
        source = resolve_model_name(name)
        try:
            model = _build(source, torch_device, precision)
        except ModelError:
            raise
        except Exception as exc:  # torch, safetensors, hub and open_clip raise many types
            raise describe_load_failure(name, exc) from exc
        _CACHE[key] = model
        return model.with_tta(tta)
