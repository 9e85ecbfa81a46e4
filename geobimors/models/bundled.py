"""Models that ship inside the package and work offline.

The registry below only names them: a bundled model's code (and torch, open_clip)
is imported when it is loaded, so that listing or resolving a model name stays cheap
and the model modules need not import this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geobimors.errors import ModelError

if TYPE_CHECKING:
    import torch

    from geobimors.models.clip import ClipModel


@dataclass(frozen=True)
class BundledModel:
    """A model shipped with geobimors.

    Attributes:
        name: the ``--model`` name.
        loader: ``module:function`` that builds the model: ``function(device, precision)``.
        chip_size: chip edge in pixels at ``gsd`` that the model expects.
        gsd: native ground resolution in metres per pixel.
        description: one line for listings.
        gsd_range: (finest, coarsest) ground resolution in metres per model-input pixel that the
            model was trained on; ``map`` and ``embed`` resample a scene to the nearest resolution
            in this range (``None``: always to ``gsd``).
        native_upsampling: scenes coarser than ``gsd`` by up to this factor are still resampled
            to ``gsd`` (the model was trained on chips blurred that much: mini's 10 m chips imaged
            at 10-30 m), coarser ones go to the nearest resolution in ``gsd_range``.
        default_gsd_floor: the finest resolution ``map`` and ``embed`` pick without ``--gsd``
            (``None``: the finest of ``gsd_range``). The range's edge is what the strongest crops of
            training reached; chips there see less ground than the model mostly learnt from.
        vocabulary: ``module:attribute`` naming the phrasing groups (one list per trained class)
            the model's text side was trained on; zero-shot labels outside them are anchored to
            the nearest (:mod:`geobimors.models.anchors`). ``None``: labels are read as written.
    """

    name: str
    loader: str
    chip_size: int
    gsd: float
    description: str
    gsd_range: tuple[float, float] | None = None
    native_upsampling: float = 1.0
    default_gsd_floor: float | None = None
    vocabulary: str | None = None


BUNDLED_MODELS: dict[str, BundledModel] = {
    "mini": BundledModel(
        name="mini",
        loader="geobimors.models.mini:load_mini",
        chip_size=64,
        gsd=10.0,
        description=(
            "geobimors-mini: ResNet-10-T image tower trained on EuroSAT, UC Merced, AID and UCM-Captions "
            "(0.6-30 m), frozen MiniLM-L6 text"
        ),
        gsd_range=(0.6, 30.0),
        native_upsampling=3.0,
        # 64 px at 1.2 m is a whole UC Merced image (77 m); at 0.6 m a quarter of one. Chosen on a val
        # mosaic of UC Merced images among 0.6, 0.9 and 1.2 m (docs/benchmarks.md, bench_map_views.py).
        default_gsd_floor=1.2,
        vocabulary="geobimors.models.mini.classes:TRAINED_CONCEPTS",
    ),
}


def register(model: BundledModel) -> None:
    """Register a bundled model."""
    BUNDLED_MODELS[model.name] = model


def _get(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise ModelError(f"no bundled model named {name!r}; bundled: {', '.join(BUNDLED_MODELS) or 'none'}") from None


def load_bundled(name: str, device: torch.device, precision: str) -> ClipModel:
    """Load a bundled model by name."""
    module_name, _, function = _get(name).loader.partition(":")
    loader = getattr(importlib.import_module(module_name), function)
    model: ClipModel = loader(device, precision)
    model.trained_vocabulary = declared_vocabulary(name)
    return model


def declared_geometry(name: str) -> tuple[int, float]:
    """(chip size in px, native GSD in m/px) of a bundled model."""
    model = _get(name)
    return model.chip_size, model.gsd


def declared_gsd_range(name: str) -> tuple[float, float] | None:
    """(finest, coarsest) ground resolution in m/px a bundled model was trained on, if it declares one."""
    return _get(name).gsd_range


def declared_default_gsd_floor(name: str) -> float | None:
    """The finest resolution (m/px) a bundled model's scenes are read at by default, if it declares one."""
    return _get(name).default_gsd_floor


def declared_native_upsampling(name: str) -> float:
    """How many times coarser than its native resolution a scene may be and still be resampled to it."""
    return _get(name).native_upsampling


def declared_vocabulary(name: str) -> list[list[str]] | None:
    """The phrasing groups a bundled model's text side was trained on (one list per class), if it declares them."""
    target = _get(name).vocabulary
    if target is None:
        return None
    module_name, _, attribute = target.partition(":")
    groups: list[list[str]] = getattr(importlib.import_module(module_name), attribute)
    return groups


def anchored_prompts(name: str, prompts: Sequence[str]) -> list[str]:
    """The prompts a bundled model anchors: those that are none of its trained phrasings (compared without case).

    What :mod:`geobimors.models.anchors` decides from sentence similarity, told without loading the model
    (for summaries and resume fingerprints). Empty for models without a declared vocabulary.
    """
    groups = declared_vocabulary(name)
    return outside_vocabulary(groups, prompts) if groups else []


def outside_vocabulary(groups: Sequence[Sequence[str]], prompts: Sequence[str]) -> list[str]:
    """The prompts that are none of the phrasings in ``groups`` (compared without case or outer spaces)."""
    trained = {phrasing.lower() for group in groups for phrasing in group}
    return [prompt for prompt in prompts if prompt.strip().lower() not in trained]
