"""Search hits to a styled GeoPackage layer ``hits``, written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import numpy as np

from geobimors.vector.gpkg import GeoPackageWriter
from geobimors.vector.style import categorized_qml

if TYPE_CHECKING:
    import geopandas as gpd

HITS_LAYER = "hits"
# ColorBrewer YlOrRd: low scores pale, the best hits red.
_RAMP = ("#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")


def graduated_qml(values: Sequence[float] | np.ndarray, field: str = "score", fill_alpha: int = 170) -> str:
    """QML of a graduated fill renderer: five quantile classes of ``field``, pale to red."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if len(data) == 0:
        data = np.array([0.0, 1.0])
    edges = np.unique(np.quantile(data, np.linspace(0, 1, len(_RAMP) + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0] - 1e-6, edges[0] + 1e-6])
    ranges, symbols = [], []
    for i, (lower, upper) in enumerate(pairwise(edges)):
        colour = _RAMP[min(len(_RAMP) - 1, round(i * (len(_RAMP) - 1) / max(1, len(edges) - 2)))]
        rgb = ",".join(str(int(colour[j : j + 2], 16)) for j in (1, 3, 5))
        label = f"{lower:.3f} - {upper:.3f}"
        ranges.append(
            f'<range symbol="{i}" lower="{lower:.6f}" upper="{upper:.6f}" label={quoteattr(label)} render="true"/>'
        )
        props = {
            "color": f"{rgb},{fill_alpha}",
            "outline_color": f"{rgb},255",
            "outline_style": "solid",
            "outline_width": "0.3",
            "outline_width_unit": "MM",
            "style": "solid",
            "joinstyle": "bevel",
        }
        prop_xml = "".join(f"<prop k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in props.items())
        symbols.append(
            f'<symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" pass="0" locked="0">{prop_xml}</layer></symbol>'
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        f'<renderer-v2 type="graduatedSymbol" attr={quoteattr(field)} graduatedMethod="GraduatedColor" '
        'symbollevels="0" enableorderby="0" forceraster="0">\n'
        f"<ranges>{''.join(ranges)}</ranges>\n"
        f"<symbols>{''.join(symbols)}</symbols>\n"
        '<mode name="quantile"/>\n'
        "</renderer-v2>\n"
        "<blendMode>0</blendMode><featureBlendMode>0</featureBlendMode>\n"
        "</qgis>\n"
    )


def hits_qml(frame: gpd.GeoDataFrame, queries: Sequence[str]) -> str:
    """The default style: graduated by score for one query, categorized by query for several."""
    if len(queries) > 1:
        return categorized_qml(list(queries), field="query")
    return graduated_qml(frame["score"].to_numpy() if len(frame) else [])


def write_hits(
    frame: gpd.GeoDataFrame,
    queries: Sequence[str],
    output: str | os.PathLike[str],
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write hits to the styled ``hits`` layer of a GeoPackage (temporary file, renamed into place).

    An empty frame still makes the layer (an honest empty result).
    """
    with GeoPackageWriter(output, overwrite, metadata or {}, main_layer=HITS_LAYER) as writer:
        writer.append(frame)
        return writer.finish_with_styles([(HITS_LAYER, hits_qml(frame, queries))])
