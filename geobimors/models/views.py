"""Views of chips: the full chip, its quadrants and its centre crop (MPS-CLIP's multi-perspective views)."""

from __future__ import annotations

from typing import Any

import numpy as np

from geobimors.errors import InputError

VIEW_COUNTS = (1, 5, 6)
"""Allowed ``--views``: the full chip; and its four quadrants; and its centre crop too."""


def view_crops(chips: np.ndarray, views: int) -> list[np.ndarray]:
    """The views of (N, H, W, 3) chips, each an (N, h, w, 3) array (MPS-CLIP's multi-perspective views).

    View 0 is the full chip; views 1-4 its quadrants (top left, top right, bottom left, bottom
    right); view 5 its centre crop of half the size. Every view is later resized to the model input,
    so a sub-view is seen at twice the detail of the full one.

    Args:
        chips: uint8 chips of one size.
        views: how many views (one of :data:`VIEW_COUNTS`).
    """
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    height, width = chips.shape[1:3]
    h, w = height // 2, width // 2
    out = [chips]
    if views >= 5:
        out += [chips[:, r : r + h, c : c + w] for r in (0, height - h) for c in (0, width - w)]
    if views >= 6:
        top, left = (height - h) // 2, (width - w) // 2
        out.append(chips[:, top : top + h, left : left + w])
    return [np.ascontiguousarray(v) for v in out]


def encode_views(clip: Any, chips: np.ndarray, views: int) -> Any:
    """L2-normalised features of every view of raw (N, H, W, 3) uint8 chips, (N, V, D) on the model's device.

    Args:
        clip: a :class:`geobimors.models.clip.ClipModel` (anything with ``preprocess`` and ``encode_images``).
        chips: uint8 chips of one size.
        views: how many views (:func:`view_crops`); view 0 is the chip itself.
    """
    import torch  # here, so that checking options (check_views) does not import torch

    with torch.no_grad():
        return torch.stack([clip.encode_images(clip.preprocess(v)) for v in view_crops(chips, views)], dim=1)


def check_views(views: int, view_blend: float | None = None) -> None:
    """Validate ``--views`` and ``--view-blend`` (before any model loads).

    Raises:
        InputError: (one line) views other than 1, 5 or 6; a weight outside 0..1 (or NaN); a weight
            without sub-views.
    """
    if views not in VIEW_COUNTS:
        raise InputError(
            f"--views must be 1 (the full image), 5 (and its four quadrants) or 6 (and its centre crop too), "
            f"got {views}"
        )
    if view_blend is not None and not 0.0 <= view_blend <= 1.0:  # NaN fails both comparisons
        raise InputError(f"--view-blend must be a weight between 0 and 1, got {view_blend}")
    if view_blend is not None and views == 1:
        raise InputError("--view-blend weighs the sub-views against the full image: pass --views 5 or 6 with it")
