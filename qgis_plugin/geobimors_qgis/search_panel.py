"""The panel's search box: text, or chips picked on the map as examples; adds the hits layer."""

import os
import tempfile
import time

from qgis.core import Qgis, QgsApplication, QgsProject, QgsVectorLayer
from qgis.gui import QgsFileWidget, QgsMapToolEmitPoint
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QWidget

from .runner import EnvironmentProblem, SearchRequest, write_points_geojson
from .task import SearchTask


class SearchBox(QGroupBox):
    """Search an embeddings store by text, or by chips picked on the map.

    Left clicks with the pick tool add examples (find chips like these), right clicks add
    counter-examples (push the search away from these). Each search adds a ``hits`` layer.

    Args:
        iface: the QGIS interface.
        prefix: a callable returning the CLI command prefix (raises EnvironmentProblem).
        message: a callable(text, level) showing a message.
    """

    def __init__(self, iface, prefix, message, parent=None):
        super().__init__("Search embeddings", parent)
        self.iface = iface
        self.prefix = prefix
        self.message = message
        self.task = None
        self.examples = []  # (x, y) in self.examples_crs
        self.counter_examples = []
        self.examples_crs = ""
        self.tool = None
        form = QFormLayout(self)
        self.store = QgsFileWidget()
        self.store.setFilter("GeoParquet embeddings store (*.parquet)")
        self.store.setToolTip("A store made by 'geobimors embed' or the 'Embed scene' algorithm.")
        self.query = QLineEdit("")
        self.query.setPlaceholderText("e.g. solar farm  (several queries: separate with ;)")
        self.query.returnPressed.connect(self.search)
        self.k = QSpinBox()
        self.k.setRange(1, 100000)
        self.k.setValue(50)
        self.pick_button = QPushButton("Pick examples on the map")
        self.pick_button.setCheckable(True)
        self.pick_button.setToolTip("Left click: a chip like the ones you want; right click: a counter-example.")
        self.pick_button.toggled.connect(self.toggle_pick)
        clear = QPushButton("Clear")
        clear.clicked.connect(self.clear_examples)
        picks = QHBoxLayout()
        picks.addWidget(self.pick_button)
        picks.addWidget(clear)
        picks_widget = QWidget()
        picks.setContentsMargins(0, 0, 0, 0)
        picks_widget.setLayout(picks)
        self.picked = QLabel("no examples picked")
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        form.addRow("Store", self.store)
        form.addRow("Text", self.query)
        form.addRow("Hits per query", self.k)
        form.addRow("Examples", picks_widget)
        form.addRow("", self.picked)
        form.addRow("", self.search_button)

    # ----------------------------------------------------------------------------- picking

    def toggle_pick(self, on):
        canvas = self.iface.mapCanvas()
        if on:
            self.tool = QgsMapToolEmitPoint(canvas)
            self.tool.canvasClicked.connect(self.picked_point)
            canvas.setMapTool(self.tool)
        elif self.tool is not None:
            canvas.unsetMapTool(self.tool)
            self.tool = None

    def picked_point(self, point, button):
        crs = self.iface.mapCanvas().mapSettings().destinationCrs()
        self.add_example(point.x(), point.y(), crs.authid() or crs.toWkt(), counter=button == Qt.RightButton)

    def add_example(self, x, y, crs, counter=False):
        """Add a picked point (map coordinates in ``crs``) as an example or a counter-example."""
        if self.examples_crs and crs != self.examples_crs:
            self.clear_examples()  # the map CRS changed: earlier picks are in another CRS
        self.examples_crs = crs
        (self.counter_examples if counter else self.examples).append((x, y))
        self.picked.setText(f"{len(self.examples)} examples, {len(self.counter_examples)} counter-examples")

    def clear_examples(self):
        self.examples, self.counter_examples, self.examples_crs = [], [], ""
        self.picked.setText("no examples picked")

    # ------------------------------------------------------------------------------ search

    def request(self):
        store = self.store.filePath().strip()
        if not store:
            raise ValueError("choose an embeddings store (.parquet, made by 'Embed scene')")
        queries = [q.strip() for q in self.query.text().split(";") if q.strip()]
        if not queries and not self.examples:
            raise ValueError("write what to search for, or pick example chips on the map")
        folder = os.path.join(tempfile.gettempdir(), "geobimors-hits")
        os.makedirs(folder, exist_ok=True)
        stem = os.path.splitext(os.path.basename(store))[0]
        output = os.path.join(folder, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.gpkg")
        like = [write_points_geojson(self.examples, self.examples_crs)] if self.examples else []
        unlike = [write_points_geojson(self.counter_examples, self.examples_crs)] if self.counter_examples else []
        return SearchRequest(store=store, output=output, queries=queries, like=like, unlike=unlike, k=self.k.value())

    def search(self):
        """Start a search task; its hits layer is added when it ends."""
        if self.task is not None:
            return None
        try:
            request = self.request()
            prefix = self.prefix()
        except (ValueError, EnvironmentProblem) as exc:
            self.message(str(exc), Qgis.Critical)
            return None
        self.task = SearchTask(prefix, request, self.done)
        self.search_button.setEnabled(False)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def done(self, result, error):
        task, self.task = self.task, None
        self.search_button.setEnabled(True)
        if task is not None:
            for path in task.request.like + task.request.unlike:
                if os.path.basename(path).startswith("geobimors-examples-") and os.path.exists(path):
                    os.remove(path)
        if result is not None:
            for warning in result.warnings:
                self.message(warning, Qgis.Warning)
        if error is not None:
            self.message(error, Qgis.Critical)
            return None
        return self.add_hits(result.output, task.request if task is not None else None)

    def add_hits(self, path, request=None):
        """Add the hits layer (styled from the file) at the top of the layer tree."""
        what = "; ".join(request.queries) if request is not None and request.queries else "examples"
        layer = QgsVectorLayer(f"{path}|layername=hits", f"geobimors hits: {what}", "ogr")
        if not layer.isValid():
            self.message(f"could not open {path}", Qgis.Critical)
            return None
        QgsProject.instance().addMapLayer(layer, False)
        QgsProject.instance().layerTreeRoot().insertLayer(0, layer)
        self.message(f"added {layer.featureCount()} hits for {what}", Qgis.Success)
        return layer
