"""Models that ship inside the package and work offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from geobimors.errors import ModelError

if TYPE_CHECKING:
    from geobimors.models.clip import ClipModel


@dataclass(frozen=True)
class BundledModel:
    """A model shipped with geobimors.

    Attributes:
        name: the ``--model`` name.
        loader: builds the model: ``loader(device, precision)``.
        chip_size: chip edge in pixels at ``gsd`` that the model expects.
        gsd: native ground resolution in metres per pixel.
        description: one line for listings.
    """

    name: str
    loader: Callable[[torch.device, str], ClipModel]
    chip_size: int
    gsd: float
    description: str


# Filled by the modules of the bundled models when they are imported.
BUNDLED_MODELS: dict[str, BundledModel] = {}


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
    return _get(name).loader(device, precision)


def declared_geometry(name: str) -> tuple[int, float]:
    """(chip size in px, native GSD in m/px) of a bundled model."""
    model = _get(name)
    return model.chip_size, model.gsd


# The bundled models register themselves on import (after the registry above exists).
from geobimors.models import mini as _mini  # noqa: E402,F401
