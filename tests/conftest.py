"""Shared fixtures: tiny models built locally, generated rasters, real sample data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Never touch the network: a missing model must fail at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "sample_data"
sys.path.insert(0, str(TESTS))

from rasters import make_geotiff, random_rgb  # noqa: E402
from tiny_models import make_tiny_clip_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name (a local model folder) of a tiny random-weight CLIP."""
    return str(make_tiny_clip_dir(tmp_path_factory.mktemp("models") / "tiny-clip"))


@pytest.fixture()
def labels_file(tmp_path: Path) -> Path:
    """A labels file with four classes, a comment and a prompt."""
    path = tmp_path / "labels.txt"
    path.write_text("# land cover\nforest\nwater: a lake or the sea\n\nfields\nbuildings\n")
    return path


@pytest.fixture()
def rgb_scene(tmp_path: Path) -> Path:
    """A 96 x 128 px uint8 RGB GeoTIFF in UTM with 10 m pixels."""
    return make_geotiff(tmp_path / "scene.tif", random_rgb(96, 128))


@pytest.fixture(scope="session")
def shared_scenes() -> Path:
    """The real scenes in ../shared/data/scenes (skips when absent)."""
    path = SHARED_DATA / "scenes"
    if not path.is_dir():
        pytest.skip("../shared/data is not available")
    return path
