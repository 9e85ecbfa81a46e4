"""The dock panel: pick a raster, write labels, choose a model, run, and see the result on the map."""

import contextlib
import os

from qgis.core import Qgis, QgsApplication, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsCheckableComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .runner import EnvironmentProblem, MapRequest, check_environment, command_prefix, scene_arguments
from .search_panel import SearchBox
from .settings import configured_executable, set_configured_executable
from .task import MapTask

DEFAULT_LABELS = "\n".join(
    [
        "forest",
        "sea or lake",
        "river",
        "residential buildings",
        "industrial buildings",
        "annual crop land",
        "pasture land",
    ]
)


class MapPanel(QDockWidget):
    """geobimors dock panel.

    Args:
        iface: the QGIS interface (message bar, map canvas).
    """

    def __init__(self, iface, parent=None):
        super().__init__("geobimors", parent)
        self.setObjectName("GeobimorsPanel")
        self.iface = iface
        self.task = None
        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()

        self.raster = QgsMapLayerComboBox()
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.raster.setAllowEmptyLayer(True)
        self.more_layers = QgsCheckableComboBox()
        self.more_layers.setToolTip("More raster layers mapped with the first one into one output (a 'scene' column).")
        self.raster_file = QgsFileWidget()
        self.raster_file.setStorageMode(QgsFileWidget.GetMultipleFiles)
        self.raster_file.setFilter("Rasters (*.tif *.tiff *.vrt *.jp2 *.img);;All files (*)")
        self.folder = QgsFileWidget()
        self.folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder.setToolTip("Every raster in the folder is mapped into one output.")
        form.addRow("Raster layer", self.raster)
        form.addRow("and more layers", self.more_layers)
        form.addRow("or raster files", self.raster_file)
        form.addRow("or a folder of rasters", self.folder)
        project = QgsProject.instance()
        project.layersAdded.connect(self.refresh_layers)
        project.layersRemoved.connect(self.refresh_layers)
        self.refresh_layers()

        self.labels = QPlainTextEdit(DEFAULT_LABELS)
        self.labels.setToolTip("One label per line; 'label: prompt text' describes a label in other words.")
        load, save = QPushButton("Load…"), QPushButton("Save…")
        load.clicked.connect(self.load_labels)
        save.clicked.connect(self.save_labels)
        buttons = QHBoxLayout()
        buttons.addWidget(load)
        buttons.addWidget(save)
        form.addRow("Labels", self.labels)
        form.addRow("", self._wrap(buttons))

        self.model = QLineEdit("")
        self.model.setPlaceholderText("mini (bundled); ViT-B-16:openai; hf-hub:ORG/REPO; ARCH:/path/weights")
        self.head = QgsFileWidget()
        self.head.setFilter("Head checkpoints (*.safetensors)")
        self.chip_size = QLineEdit("")
        self.chip_size.setPlaceholderText("model default; 224 or 640m")
        self.overlap = QLineEdit("0")
        self.bands = QLineEdit("")
        self.bands.setPlaceholderText("e.g. 3,2,1 (default: R,G,B colour interpretation)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.captions = QCheckBox("Caption every chip (bundled captioner; slower)")
        self.captions.setToolTip("Adds a 'caption' attribute, shown in Identify results and the attribute table")
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoPackage (*.gpkg)")
        form.addRow("Model", self.model)
        form.addRow("Trained head", self.head)
        form.addRow("Chip size", self.chip_size)
        form.addRow("Overlap", self.overlap)
        form.addRow("Bands", self.bands)
        form.addRow("Device", self.device)
        form.addRow("Captions", self.captions)
        form.addRow("Output", self.output)

        self.executable = QLineEdit(configured_executable())
        self.executable.setPlaceholderText("geobimors on PATH, or the path of geobimors or of its Python")
        self.executable.editingFinished.connect(lambda: set_configured_executable(self.executable.text()))
        check = QPushButton("Check")
        check.clicked.connect(self.check)
        row = QHBoxLayout()
        row.addWidget(self.executable)
        row.addWidget(check)
        form.addRow("geobimors", self._wrap(row))
        layout.addLayout(form)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        actions = QHBoxLayout()
        actions.addWidget(self.progress)
        actions.addWidget(self.run_button)
        actions.addWidget(self.cancel_button)
        layout.addLayout(actions)
        self.search_box = SearchBox(iface, self.prefix, self.message)
        layout.addWidget(self.search_box)
        self.setWidget(body)

    @staticmethod
    def _wrap(layout):
        widget = QWidget()
        layout.setContentsMargins(0, 0, 0, 0)
        widget.setLayout(layout)
        return widget

    def message(self, text, level=Qgis.Info):
        """Show a message in QGIS' message bar."""
        self.iface.messageBar().pushMessage("geobimors", text, level=level, duration=10)

    def load_labels(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load labels", "", "Text files (*.txt);;All files (*)")
        if path:
            with open(path, encoding="utf-8") as f:
                self.labels.setPlainText(f.read())

    def save_labels(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", "labels.txt", "Text files (*.txt)")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.labels.toPlainText().strip() + "\n")

    def prefix(self):
        """The CLI command for the configured environment (raises EnvironmentProblem)."""
        set_configured_executable(self.executable.text())
        return command_prefix(self.executable.text())

    def check(self):
        try:
            version = check_environment(self.prefix())
        except EnvironmentProblem as exc:
            self.message(str(exc), Qgis.Critical)
            return None
        self.message(f"found {version}", Qgis.Success)
        return version

    def refresh_layers(self, *_):
        """List the project's raster layers in the 'more layers' box (keeping those checked)."""
        checked = set(self.more_layers.checkedItemsData())
        self.more_layers.clear()
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsRasterLayer):
                self.more_layers.addItemWithCheckState(
                    layer.name(), Qt.Checked if layer.id() in checked else Qt.Unchecked, layer.id()
                )

    def disconnect_project(self):
        """Stop following the project's layers (the panel is being removed)."""
        project = QgsProject.instance()
        for signal in (project.layersAdded, project.layersRemoved):
            with contextlib.suppress(TypeError):  # not connected
                signal.disconnect(self.refresh_layers)

    def scenes(self):
        """What to map, and the layer to draw the result above.

        Raster files, else a folder, else the raster layer with the checked 'more layers':
        several SCENE arguments of one ``geobimors map`` run.
        """
        files = [p for p in QgsFileWidget.splitFilePaths(self.raster_file.filePath()) if p.strip()]
        folder = self.folder.filePath().strip()
        if files or folder:
            return files + ([folder] if folder else []), None
        project = QgsProject.instance()
        layers = [self.raster.currentLayer()] + [project.mapLayer(i) for i in self.more_layers.checkedItemsData()]
        layers = [layer for layer in layers if layer is not None]
        return [layer.source() for layer in layers], (layers[0] if layers else None)

    def request(self):
        scenes = scene_arguments(self.scenes()[0])  # ValueError when nothing is chosen
        output = self.output.filePath().strip()
        if not output:
            first = os.path.splitext(os.path.basename(scenes[0].rstrip(os.sep)))[0]
            output = (first if len(scenes) == 1 else f"{first}-and-{len(scenes) - 1}-more") + ".geobimors.gpkg"
            output = os.path.join(QgsProject.instance().homePath() or os.path.expanduser("~"), output)
        if not output.lower().endswith(".gpkg"):
            output += ".gpkg"
        labels = [line for line in self.labels.toPlainText().splitlines() if line.strip()]
        head = self.head.filePath().strip() or None
        if not labels and not head:
            raise ValueError("write at least two labels, or choose a trained head")
        return MapRequest(
            scene=scenes,
            output=output,
            labels=labels,
            model=self.model.text().strip() or None,
            head=head,
            chip_size=self.chip_size.text().strip() or None,
            overlap=self.overlap.text().strip() or None,
            bands=self.bands.text().strip() or None,
            device=self.device.currentText(),
            captioner="mini" if self.captions.isChecked() else None,
        )

    def run(self):
        """Start a mapping task."""
        try:
            request = self.request()
            prefix = self.prefix()
        except (ValueError, EnvironmentProblem) as exc:
            self.message(str(exc), Qgis.Critical)
            return None
        self.progress.setValue(0)
        self.task = MapTask(prefix, request, self.done)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self):
        if self.task is not None:
            self.task.cancel()

    def done(self, result, error):
        """Called when the task ends: add the result to the map, or explain the error."""
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.task = None
        if result is not None:
            for warning in result.warnings:
                self.message(warning, Qgis.Warning)
        if error is not None and (result is None or not os.path.exists(result.output)):
            self.message(error, Qgis.Critical)
            return
        self.progress.setValue(100)
        self.add_result(result.output)

    def add_result(self, path):
        """Add the chips layer (styled from the file) just above the raster layer."""
        layer = QgsVectorLayer(f"{path}|layername=chips", f"geobimors: {os.path.basename(path)}", "ogr")
        if not layer.isValid():
            self.message(f"could not open {path}", Qgis.Critical)
            return None
        project = QgsProject.instance()
        project.addMapLayer(layer, False)
        root = project.layerTreeRoot()
        _, raster = self.scenes()
        index = 0
        if isinstance(raster, QgsRasterLayer):
            node = root.findLayer(raster.id())
            if node is not None and node.parent() is root:
                index = root.children().index(node)
        root.insertLayer(index, layer)
        self.message(f"added {layer.featureCount()} labeled chips from {path}", Qgis.Success)
        return layer
