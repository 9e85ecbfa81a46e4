"""What every geobimors Processing algorithm shares: its id, name, group and icon."""

import os

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

ICON = os.path.join(os.path.dirname(__file__), "icon.png")


class GeobimorsAlgorithm(QgsProcessingAlgorithm):
    """A Processing algorithm of the geobimors provider; subclasses set the four names below."""

    NAME = ""
    DISPLAY_NAME = ""
    GROUP = ""
    GROUP_ID = ""

    def name(self):
        return self.NAME

    def displayName(self):
        return self.DISPLAY_NAME

    def group(self):
        return self.GROUP

    def groupId(self):
        return self.GROUP_ID

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):
        return type(self)()
