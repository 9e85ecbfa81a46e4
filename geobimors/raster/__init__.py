"""Raster stage: scenes, chip grids, windowed chip reads and scaling to 8 bits."""

from geobimors.raster.grid import Chip, ChipGrid, GridSpec
from geobimors.raster.read import ChipReader, ReadSpec
from geobimors.raster.scaling import ScaleRange, scene_scale_range
from geobimors.raster.scene import SceneInfo, open_scene, select_bands

__all__ = [
    "Chip",
    "ChipGrid",
    "ChipReader",
    "GridSpec",
    "ReadSpec",
    "ScaleRange",
    "SceneInfo",
    "open_scene",
    "scene_scale_range",
    "select_bands",
]
