"""The plugin object QGIS loads: a toolbar button for the panel, help/about, the Processing provider."""

import os

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMessageBox

from .panel import MapPanel
from .provider import GeobimorsProvider

HERE = os.path.dirname(__file__)
HELP_URL = "https://github.com/geobimors/geobimors#readme"


class GeobimorsPlugin:
    """geobimors for QGIS."""

    def __init__(self, iface):
        self.iface = iface
        self.panel = None
        self.provider = None
        self.actions = []

    def initProcessing(self):
        self.provider = GeobimorsProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()
        icon = QIcon(os.path.join(HERE, "icon.png"))
        show = QAction(icon, "geobimors: map a scene", self.iface.mainWindow())
        show.triggered.connect(self.toggle_panel)
        about = QAction("About geobimors…", self.iface.mainWindow())
        about.triggered.connect(self.about)
        self.iface.addToolBarIcon(show)
        for action in (show, about):
            self.iface.addPluginToRasterMenu("geobimors", action)
        self.actions = [show, about]

    def toggle_panel(self):
        if self.panel is None:
            self.panel = MapPanel(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.panel)
        self.panel.setVisible(True)
        return self.panel

    def about(self):
        QMessageBox.about(
            self.iface.mainWindow(),
            "geobimors",
            "geobimors maps what is on the ground with vision-language models: it classifies every chip of a "
            "raster against your labels and adds the labeled polygons to the map.<br><br>"
            "The plugin runs the <code>geobimors</code> command line; set its environment in the panel. "
            f'Documentation: <a href="{HELP_URL}">{HELP_URL}</a>',
        )

    def unload(self):
        for action in self.actions:
            self.iface.removePluginRasterMenu("geobimors", action)
        if self.actions:
            self.iface.removeToolBarIcon(self.actions[0])
        if self.panel is not None:
            self.iface.removeDockWidget(self.panel)
            self.panel.disconnect_project()
            self.panel.deleteLater()
            self.panel = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
