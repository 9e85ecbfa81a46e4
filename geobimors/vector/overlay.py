"""How much of each chip labelled geometries cover, per class: training chips and reference scoring.

Polygons count by area, points by number: a chip's class fractions are the
area of the chip each class covers (over the chip's area), or the share of
the points inside the chip that carry each class. The majority class and its
fraction (the purity) label a chip for training and accuracy assessment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely


@dataclass
class Coverage:
    """Class fractions of chips.

    Attributes:
        fractions: (N, K) fraction of each chip covered by each class (points: share of the points).
        covered: (N,) fraction of each chip covered by any labelled geometry (points: 1 where any).
        dominant: (N,) index of the geometry covering most of each chip (-1: none).
    """

    fractions: np.ndarray
    covered: np.ndarray
    dominant: np.ndarray

    @property
    def majority(self) -> np.ndarray:
        """(N,) index of the class covering most of each chip (-1 where nothing does)."""
        best = self.fractions.argmax(axis=1) if self.fractions.shape[1] else np.zeros(len(self.fractions), int)
        return np.where(self.covered > 0, best, -1)

    @property
    def purity(self) -> np.ndarray:
        """(N,) fraction of each chip's labelled part taken by its majority class (0 where unlabelled)."""
        top = self.fractions.max(axis=1) if self.fractions.shape[1] else np.zeros(len(self.fractions))
        return np.divide(top, self.covered, out=np.zeros_like(top), where=self.covered > 0)


def class_coverage(chips: np.ndarray, geometries: np.ndarray, classes: np.ndarray, n_classes: int) -> Coverage:
    """Per-class coverage of chip polygons by labelled polygons or points.

    Args:
        chips: (N,) chip polygons (shapely), in the geometries' CRS.
        geometries: (M,) labelled polygons, or points (all one kind; multi-parts allowed).
        classes: (M,) class index of each geometry.
        n_classes: number of classes.

    Returns:
        The coverage; with polygons, ``fractions`` is the area share of the chip
        (overlapping polygons are counted once per polygon, then capped at 1).
    """
    n = len(chips)
    fractions = np.zeros((n, n_classes), dtype=np.float64)
    dominant = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(geometries) == 0:
        return Coverage(fractions, np.zeros(n), dominant)
    tree = shapely.STRtree(geometries)
    chip_index, geom_index = tree.query(chips, predicate="intersects")
    points = is_points(geometries)
    if points:
        weights = np.ones(len(chip_index))
    else:
        weights = shapely.area(shapely.intersection(chips[chip_index], geometries[geom_index]))
    np.add.at(fractions, (chip_index, classes[geom_index]), weights)
    order = np.lexsort((-weights, chip_index))  # per chip, largest share first
    first = np.ones(len(order), dtype=bool)
    first[1:] = chip_index[order][1:] != chip_index[order][:-1]
    dominant[chip_index[order][first]] = geom_index[order][first]
    if points:
        totals = fractions.sum(axis=1)
        fractions = np.divide(fractions, totals[:, None], out=fractions, where=totals[:, None] > 0)
        covered = (totals > 0).astype(np.float64)
    else:
        area = shapely.area(chips)
        fractions = np.minimum(fractions / np.where(area > 0, area, 1)[:, None], 1.0)
        covered = np.minimum(fractions.sum(axis=1), 1.0)
    return Coverage(fractions, covered, dominant)


def is_points(geometries: np.ndarray) -> bool:
    """True when every geometry is a point or multi-point."""
    kinds = shapely.get_type_id(geometries)
    return bool(len(kinds)) and bool(
        np.isin(kinds, [shapely.GeometryType.POINT, shapely.GeometryType.MULTIPOINT]).all()
    )


def warn_assumed_crs(first: tuple[str, Any], second: tuple[str, Any]) -> None:
    """Say which CRS is assumed when only one of two layers has one (QGIS' habit, said aloud).

    Args:
        first: a layer's name as a message calls it (``"reference ref.gpkg"``) and its CRS or None.
        second: the other layer's, likewise.
    """
    from geobimors.errors import warn

    for (name, crs), (other_name, other_crs) in ((first, second), (second, first)):
        if crs is None and other_crs is not None:
            warn(f"{name} has no CRS; assumed to be in the CRS of {other_name} ({other_crs.to_string()})")
