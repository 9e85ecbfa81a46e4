"""A headless QGIS for the plugin tests (Debian's python3 with the qgis module).

Run with: QT_QPA_PLATFORM=offscreen /usr/bin/python3 -m pytest qgis_plugin/tests
The plugin runs the geobimors CLI from the project's virtual environment
(GEOBIMORS_EXECUTABLE, default .venv/bin/geobimors).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GEOBIMORS_CACHE_DIR"] = tempfile.mkdtemp(prefix="geobimors-qgis-test-cache-")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "qgis_plugin"))
sys.path.insert(0, "/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication, QgsSettings  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow  # noqa: E402

QCoreApplication.setOrganizationName("geobimors-tests")  # keep the user's QGIS settings untouched
QCoreApplication.setApplicationName("geobimors-tests")
QGIS = QgsApplication([], True)
QGIS.setPrefixPath("/usr", True)
QGIS.initQgis()

from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()

EXECUTABLE = os.environ.get("GEOBIMORS_EXECUTABLE", str(ROOT / ".venv" / "bin" / "geobimors"))
SAMPLE = ROOT / "sample_data"


class FakeMessageBar:
    """Records what the plugin shows in QGIS' message bar."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int]] = []

    def pushMessage(self, title, text, level=0, duration=0):
        self.messages.append((text, int(level)))


class FakeIface:
    """The parts of QgisInterface the plugin uses."""

    def __init__(self) -> None:
        self.window = QMainWindow()
        self.bar = FakeMessageBar()
        self.toolbar: list = []
        self.menu: list = []
        self.docks: list = []

    def mainWindow(self):
        return self.window

    def messageBar(self):
        return self.bar

    def addToolBarIcon(self, action):
        self.toolbar.append(action)

    def removeToolBarIcon(self, action):
        self.toolbar.remove(action)

    def addPluginToRasterMenu(self, name, action):
        self.menu.append(action)

    def removePluginRasterMenu(self, name, action):
        self.menu.remove(action)

    def addDockWidget(self, area, dock):
        self.docks.append(dock)

    def removeDockWidget(self, dock):
        self.docks.remove(dock)


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory) -> Path:
    """The north-west 110 x 110 px of the Recife sample (5 x 5 chips): mapping it takes a moment."""
    from osgeo import gdal

    path = tmp_path_factory.mktemp("scenes") / "recife-small.tif"
    assert gdal.Translate(str(path), str(SAMPLE / "L7_ETMs.tif"), srcWin=[0, 0, 110, 110]) is not None
    return path


@pytest.fixture()
def iface():
    return FakeIface()


@pytest.fixture(autouse=True)
def environment():
    """Point the plugin at the project's geobimors for every test."""
    QgsSettings().setValue("geobimors/executable", EXECUTABLE)
    yield
    QgsSettings().remove("geobimors/executable")


def wait_for(condition, timeout: float = 600.0) -> None:
    """Run Qt's event loop until ``condition()`` holds (tasks report back through it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        QCoreApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
