"""A QGIS style for label layers, stored in the GeoPackage's ``layer_styles`` table.

QGIS applies the default style it finds in ``layer_styles`` when it opens a
layer, so the output opens categorized by label, with no plugin.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from xml.sax.saxutils import quoteattr

# Colours for common land-cover words, so maps read naturally (water is blue).
_KEYWORD_COLOURS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("river", "stream", "canal", "watercourse"), "#6baed6"),
    (("sea", "lake", "water", "ocean", "reservoir", "pond"), "#2166ac"),
    (("snow", "ice", "glacier"), "#e8f1f8"),
    (("cloud",), "#d9d9d9"),
    (("forest", "wood", "tree"), "#1b7837"),
    (("herbaceous", "shrub", "scrub", "grass", "meadow"), "#9acd32"),
    (("pasture",), "#b8e186"),
    (("permanent crop", "orchard", "vineyard"), "#c2a5cf"),
    (("crop", "farm", "agricultur", "field"), "#f1c232"),
    (("highway", "road", "motorway", "street", "parking"), "#6d6d6d"),
    (("industrial", "commercial", "factory", "port", "airport"), "#8e44ad"),
    (("residential", "building", "urban", "house", "settlement"), "#d73027"),
    (("bare", "sand", "desert", "rock", "soil", "beach"), "#d8b365"),
    (("wetland", "marsh", "swamp"), "#35978f"),
)
# A qualitative palette for other labels (ColorBrewer Set3 + Dark2).
_PALETTE = (
    "#8dd3c7",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
    "#1b9e77",
    "#d95f02",
    "#7570b3",
    "#e7298a",
    "#66a61e",
    "#e6ab02",
    "#a6761d",
)


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A hex colour per label: land-cover words get natural colours, others a palette colour."""
    colours: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        text = label.lower()
        for words, colour in _KEYWORD_COLOURS:
            if colour not in used and any(w in text for w in words):
                colours[label] = colour
                used.add(colour)
                break
    free = [c for c in _PALETTE if c not in used]
    for i, label in enumerate(lb for lb in labels if lb not in colours):
        colours[label] = free[i % len(free)] if free else _PALETTE[i % len(_PALETTE)]
    return colours


def _rgba(hex_colour: str, alpha: int) -> str:
    h = hex_colour.lstrip("#")
    return f"{int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha}"


def categorized_qml(labels: Sequence[str], field: str = "label", fill_alpha: int = 150, outline: bool = True) -> str:
    """QML of a categorized fill renderer with one category per label.

    Args:
        labels: category values, in legend order.
        field: attribute holding the label.
        fill_alpha: fill opacity 0..255 (the scene stays visible underneath).
        outline: draw chip outlines.
    """
    colours = label_colours(labels)
    categories = []
    symbols = []
    for i, label in enumerate(labels):
        categories.append(f'<category symbol="{i}" value={quoteattr(label)} label={quoteattr(label)} render="true"/>')
        props = {
            "color": _rgba(colours[label], fill_alpha),
            "outline_color": _rgba(colours[label], 255) if outline else "0,0,0,0",
            "outline_style": "solid" if outline else "no",
            "outline_width": "0.2",
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
        f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        f"<categories>{''.join(categories)}</categories>\n"
        f"<symbols>{''.join(symbols)}</symbols>\n"
        "</renderer-v2>\n"
        "<blendMode>0</blendMode><featureBlendMode>0</featureBlendMode>\n"
        "</qgis>\n"
    )


_CREATE_LAYER_STYLES = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def write_layer_styles(gpkg: str, styles: Sequence[tuple[str, str]]) -> None:
    """Store default styles in a GeoPackage's ``layer_styles`` table.

    QGIS matches a stored style to its layer by table name *and* geometry
    column, so the column is read from ``gpkg_geometry_columns`` rather than
    assumed (GDAL names it ``geom`` by default, not ``geometry``).

    Args:
        gpkg: path of the GeoPackage.
        styles: (layer name, QML) per layer; each layer must already exist.
    """
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with sqlite3.connect(gpkg) as db:
        geometry_columns = dict(db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
        db.execute(_CREATE_LAYER_STYLES)
        # Registered as an attribute table so OGR (and QGIS through it) lists it.
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, last_change) "
            "VALUES ('layer_styles', 'attributes', 'layer_styles', ?)",
            (now,),
        )
        for layer, qml in styles:
            geometry_column = geometry_columns[layer]
            db.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            db.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                (layer, geometry_column, layer, qml, "geobimors default style: categorized by label", now),
            )
    db.close()
