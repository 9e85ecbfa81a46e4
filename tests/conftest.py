"""Shared fixtures: tiny models built locally, generated rasters, real sample data."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Never touch the network: a missing model must fail at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Captions made by tests go to a throw-away cache, never the user's.
os.environ["GEOBIMORS_CACHE_DIR"] = tempfile.mkdtemp(prefix="geobimors-test-cache-")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "sample_data"
sys.path.insert(0, str(TESTS))

from rasters import make_geotiff, random_rgb  # noqa: E402
from tiny_models import make_tiny_clip_dir  # noqa: E402

# Under pytest-xdist (scripts/test runs `-n auto`), each worker gets its share of the cores for
# torch: N workers each using every core would oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name (a local model folder) of a tiny random-weight CLIP."""
    return str(make_tiny_clip_dir(tmp_path_factory.mktemp("models") / "tiny-clip"))


@pytest.fixture(scope="session")
def blind_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CLIP whose image tower sees nothing: every image gives the same features."""
    return str(make_tiny_clip_dir(tmp_path_factory.mktemp("models") / "blind-tiny-clip", blind=True))


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
def eurosat() -> Path:
    """The real EuroSAT RGB chips in ../shared/data/eurosat_rgb (skips when absent)."""
    path = SHARED_DATA / "eurosat_rgb"
    if not path.is_dir():
        pytest.skip("../shared/data/eurosat_rgb is not available")
    return path


@pytest.fixture(scope="session")
def small_eurosat(tmp_path_factory: pytest.TempPathFactory, eurosat: Path) -> Path:
    """A small EuroSAT copy: train/ (8 per class) and val/ (4 per class) of four classes."""
    root = tmp_path_factory.mktemp("eurosat-small")
    for split, count in (("train", 8), ("val", 4)):
        for name in ("AnnualCrop", "Forest", "Residential", "SeaLake"):
            target = root / split / name
            target.mkdir(parents=True)
            for path in sorted((eurosat / split / name).glob("*.jpg"))[:count]:
                shutil.copy(path, target / path.name)
    return root


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny random-weight BLIP-2 captioner."""
    from tiny_captioners import make_tiny_blip2

    return str(make_tiny_blip2(tmp_path_factory.mktemp("captioners") / "tiny-blip2"))


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny random-weight BLIP captioner."""
    from tiny_captioners import make_tiny_blip

    return str(make_tiny_blip(tmp_path_factory.mktemp("captioners") / "tiny-blip"))


@pytest.fixture(scope="session")
def shared_scenes() -> Path:
    """The real scenes in ../shared/data/scenes (skips when absent)."""
    path = SHARED_DATA / "scenes"
    if not path.is_dir():
        pytest.skip("../shared/data is not available")
    return path
