"""Processing provider with the "Map scene (geobimors)" algorithm."""

import json
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingProvider,
)
from qgis.PyQt.QtGui import QIcon

from .algorithm import ICON, GeobimorsAlgorithm
from .runner import (
    AssessRequest,
    EmbedRequest,
    EnvironmentProblem,
    MapRequest,
    layer_path,
    run_assess,
    run_embed,
    run_map,
    scene_arguments,
)
from .search_algorithm import SearchEmbeddingsAlgorithm
from .settings import configured_prefix

DEVICES = ["auto", "cpu", "cuda"]
TTA_CHOICES = ["off", "2 views (+ mirror image)", "4 views (90-degree turns)", "8 views (turns and mirror)"]
TTA_VIEWS = [1, 2, 4, 8]
DETAIL_CHOICES = ["off", "on: each chip at twice the pixels, blended with its quadrants and centre (~6x the work)"]
DETAIL_VIEWS = [1, 6]


class MapSceneAlgorithm(GeobimorsAlgorithm):
    """Classify every chip of a raster and output labeled chip polygons (a styled GeoPackage)."""

    NAME = "mapscene"
    DISPLAY_NAME = "Map scene (geobimors)"
    GROUP = "Classification"
    GROUP_ID = "classification"

    INPUT = "INPUT"
    MORE_INPUTS = "MORE_INPUTS"
    FOLDER = "FOLDER"
    LABELS = "LABELS"
    LABELS_FILE = "LABELS_FILE"
    MODEL = "MODEL"
    HEAD = "HEAD"
    CHIP_SIZE = "CHIP_SIZE"
    OVERLAP = "OVERLAP"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    ALLOW_NETWORK = "ALLOW_NETWORK"
    CAPTIONER = "CAPTIONER"
    TTA = "TTA"
    DETAIL_VIEWS = "DETAIL_VIEWS"
    LITERAL_LABELS = "LITERAL_LABELS"
    OUTPUT = "OUTPUT"

    def shortHelpString(self):
        return (
            "Cuts the raster into chips, classifies every chip against the labels with a vision-language "
            "model (zero-shot CLIP, or a trained head) and writes one polygon per chip with its label, "
            "score and runners-up, styled by label.\n\n"
            "Labels: one per line ('label: prompt text' describes a label in other words), or a labels file. "
            "Model: 'mini' (bundled, offline), an open_clip name such as ViT-B-16:openai, or a checkpoint. "
            "Chip size and overlap: pixels (224) or ground units (640m).\n\n"
            "Several scenes (more raster layers, or a folder of rasters) are mapped into one output with a "
            "'scene' column.\n\n"
            "Captioner: 'mini' (bundled, offline) or a BLIP / BLIP-2 id or folder adds a 'caption' attribute to "
            "every chip (slower than classifying on a CPU); empty: no captions.\n\n"
            "Test-time augmentation: classify the mean of 2, 4 or 8 turned and mirrored views of each chip "
            "(overhead imagery has no 'up'); a little more accurate, N times the work.\n\n"
            "Labels the bundled model was not trained on ('woodland', 'built area') are read through its nearest "
            "trained classes; 'Read labels literally' turns that off.\n\n"
            "The geobimors command line runs in the environment set in the geobimors panel's settings."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster", optional=True))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.MORE_INPUTS, "More rasters (one map of all)", QgsProcessing.TypeRaster, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.FOLDER, "Folder of rasters", behavior=QgsProcessingParameterFile.Folder, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(self.LABELS, "Labels (one per line)", multiLine=True, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFile(self.LABELS_FILE, "Labels file", optional=True, fileFilter="Text files (*.txt)")
        )
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model", defaultValue="", optional=True))
        self.addParameter(
            QgsProcessingParameterFile(
                self.HEAD, "Trained head checkpoint", optional=True, fileFilter="Head checkpoints (*.safetensors)"
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.CHIP_SIZE, "Chip size (px or ground units)", defaultValue="", optional=True
            )
        )
        self.addParameter(QgsProcessingParameterString(self.OVERLAP, "Overlap", defaultValue="0", optional=True))
        self.addParameter(
            QgsProcessingParameterString(self.BANDS, "Bands R,G,B (1-based)", defaultValue="", optional=True)
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=DEVICES, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.ALLOW_NETWORK, "Let a local file (VRT, ...) read network sources", defaultValue=False
            )
        )
        self.addParameter(QgsProcessingParameterString(self.CAPTIONER, "Captioner (empty: no captions)", optional=True))
        self.addParameter(
            QgsProcessingParameterEnum(self.TTA, "Test-time augmentation", options=TTA_CHOICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.DETAIL_VIEWS, "Detail views", options=DETAIL_CHOICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.LITERAL_LABELS, "Read labels literally (zero-shot)", defaultValue=False)
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Labeled chips", type=QgsProcessing.TypeVectorPolygon)
        )

    def scenes(self, parameters, context):
        """The SCENE arguments: the raster, the more rasters and the folder, in this order."""
        scenes = []
        raster = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if raster is not None:
            scenes.append(raster.source())
        for layer in self.parameterAsLayerList(parameters, self.MORE_INPUTS, context) or []:
            scenes.append(layer.source())
        folder = self.parameterAsFile(parameters, self.FOLDER, context)
        if folder:
            scenes.append(folder)
        try:
            return scene_arguments(scenes)
        except ValueError:
            raise QgsProcessingException("no raster given: choose a raster, more rasters or a folder") from None

    def processAlgorithm(self, parameters, context, feedback):
        scenes = self.scenes(parameters, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".gpkg"):
            output = os.path.splitext(output)[0] + ".gpkg"
        labels = [
            line for line in self.parameterAsString(parameters, self.LABELS, context).splitlines() if line.strip()
        ]
        labels_file = self.parameterAsFile(parameters, self.LABELS_FILE, context) or None
        head = self.parameterAsFile(parameters, self.HEAD, context) or None
        if not labels and not labels_file and not head:
            raise QgsProcessingException("give labels (one per line), a labels file, or a trained head")
        request = MapRequest(
            scene=scenes,
            output=output,
            labels=labels,
            labels_file=labels_file,
            model=self.parameterAsString(parameters, self.MODEL, context) or None,
            head=head,
            chip_size=self.parameterAsString(parameters, self.CHIP_SIZE, context) or None,
            overlap=self.parameterAsString(parameters, self.OVERLAP, context) or None,
            bands=self.parameterAsString(parameters, self.BANDS, context) or None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            allow_network=self.parameterAsBool(parameters, self.ALLOW_NETWORK, context),
            captioner=self.parameterAsString(parameters, self.CAPTIONER, context) or None,
            tta=TTA_VIEWS[self.parameterAsEnum(parameters, self.TTA, context)],
            views=DETAIL_VIEWS[self.parameterAsEnum(parameters, self.DETAIL_VIEWS, context)],
            literal_labels=self.parameterAsBool(parameters, self.LITERAL_LABELS, context),
        )
        try:
            prefix = configured_prefix()
        except EnvironmentProblem as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo("running: " + " ".join([*prefix, "map", *scenes, "-o", request.output]))
        result = run_map(prefix, request, feedback.setProgress, feedback.isCanceled)
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        if result.cancelled:
            raise QgsProcessingException("cancelled; run again to resume from the finished batches")
        if result.error is not None and not os.path.exists(output):
            raise QgsProcessingException(result.error)
        return {self.OUTPUT: output}


class EmbedSceneAlgorithm(GeobimorsAlgorithm):
    """Embed every chip of a raster once into a GeoParquet store (geobimors embed)."""

    NAME = "embedscene"
    DISPLAY_NAME = "Embed scene (geobimors)"
    GROUP = "Embeddings"
    GROUP_ID = "embeddings"

    INPUT = "INPUT"
    MODEL = "MODEL"
    CHIP_SIZE = "CHIP_SIZE"
    OVERLAP = "OVERLAP"
    BANDS = "BANDS"
    DTYPE = "DTYPE"
    CAPTIONER = "CAPTIONER"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    DTYPES = ("float16", "float32")

    def shortHelpString(self):
        return (
            "Cuts the raster into chips exactly as 'Map scene' does and stores every chip's image embedding "
            "once in a GeoParquet file (one row per chip: footprint, grid position, embedding; optionally "
            "its caption). Labelling with new labels and searching then work from the file without reading "
            "pixels again ('geobimors map --from-embeddings', 'geobimors search').\n\n"
            "Model: 'mini' (bundled, offline), an open_clip name such as ViT-B-16:openai, or a checkpoint. "
            "Chip size and overlap: pixels (224) or ground units (640m). Captioner: a BLIP or BLIP-2 "
            "checkpoint to store captions too (slow on CPU).\n\n"
            "The geobimors command line runs in the environment set in the geobimors panel's settings."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster"))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model", defaultValue="", optional=True))
        self.addParameter(
            QgsProcessingParameterString(
                self.CHIP_SIZE, "Chip size (px or ground units)", defaultValue="", optional=True
            )
        )
        self.addParameter(QgsProcessingParameterString(self.OVERLAP, "Overlap", defaultValue="0", optional=True))
        self.addParameter(
            QgsProcessingParameterString(self.BANDS, "Bands R,G,B (1-based)", defaultValue="", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.DTYPE, "Embedding number type", options=list(self.DTYPES), defaultValue=0)
        )
        self.addParameter(QgsProcessingParameterString(self.CAPTIONER, "Captioner (empty: no captions)", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=DEVICES, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT, "Embeddings store", fileFilter="GeoParquet (*.parquet)")
        )

    def processAlgorithm(self, parameters, context, feedback):
        raster = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if raster is None:
            raise QgsProcessingException("no raster layer given")
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".parquet"):
            output = os.path.splitext(output)[0] + ".parquet"
        request = EmbedRequest(
            scene=raster.source(),
            output=output,
            model=self.parameterAsString(parameters, self.MODEL, context) or None,
            chip_size=self.parameterAsString(parameters, self.CHIP_SIZE, context) or None,
            overlap=self.parameterAsString(parameters, self.OVERLAP, context) or None,
            bands=self.parameterAsString(parameters, self.BANDS, context) or None,
            dtype=self.DTYPES[self.parameterAsEnum(parameters, self.DTYPE, context)],
            captioner=self.parameterAsString(parameters, self.CAPTIONER, context) or None,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
        )
        try:
            prefix = configured_prefix()
        except EnvironmentProblem as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo("running: " + " ".join([*prefix, "embed", request.scene, "-o", request.output]))
        result = run_embed(prefix, request, feedback.setProgress, feedback.isCanceled)
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        if result.cancelled:
            raise QgsProcessingException("cancelled; run again to resume from the finished batches")
        if result.error is not None and not os.path.exists(output):
            raise QgsProcessingException(result.error)
        return {self.OUTPUT: output}


class AssessAccuracyAlgorithm(GeobimorsAlgorithm):
    """Accuracy of a geobimors map against a reference raster or reference polygons (runs the CLI)."""

    NAME = "assessaccuracy"
    DISPLAY_NAME = "Assess accuracy (geobimors)"
    GROUP = "Classification"
    GROUP_ID = "classification"

    MAP = "MAP"
    REFERENCE = "REFERENCE"
    MAPPING = "MAPPING"
    CLASS_COLUMN = "CLASS_COLUMN"
    MIN_PURITY = "MIN_PURITY"
    OUTPUT = "OUTPUT"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    KAPPA = "KAPPA"

    def shortHelpString(self):
        return (
            "Scores a geobimors map (its chips layer) against a reference map: a classified raster "
            "(integer classes) or labelled polygons. Each chip gets the reference class covering most of it "
            "(its purity is that class's share). Reports the confusion matrix, overall accuracy, Cohen's kappa, "
            "per-class precision (user's accuracy), recall (producer's accuracy) and F1, the majority-class "
            "baseline and area-weighted figures, as JSON (the output) with CSV files beside it.\n\n"
            "Mapping: a CSV of 'map label,reference class' rows (raster classes are pixel values); without it "
            "map labels must be the reference class names."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.MAP, "geobimors map", fileFilter="GeoPackage (*.gpkg)"))
        self.addParameter(QgsProcessingParameterMapLayer(self.REFERENCE, "Reference (classified raster or polygons)"))
        self.addParameter(
            QgsProcessingParameterFile(self.MAPPING, "Mapping file", optional=True, fileFilter="CSV (*.csv)")
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASS_COLUMN, "Class column of reference polygons", defaultValue="label", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_PURITY,
                "Score only chips this pure (0: all, by majority)",
                type=QgsProcessingParameterNumber.Double,
                minValue=0.0,
                maxValue=1.0,
                defaultValue=0.0,
            )
        )
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Report", fileFilter="JSON (*.json)"))
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, "Overall accuracy"))
        self.addOutput(QgsProcessingOutputNumber(self.KAPPA, "Cohen's kappa"))

    def processAlgorithm(self, parameters, context, feedback):
        reference = self.parameterAsLayer(parameters, self.REFERENCE, context)
        if reference is None:
            raise QgsProcessingException("no reference layer given")
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".json"):
            output = os.path.splitext(output)[0] + ".json"
        request = AssessRequest(
            map_path=self.parameterAsFile(parameters, self.MAP, context),
            reference=layer_path(reference.source()),
            output=output,
            mapping=self.parameterAsFile(parameters, self.MAPPING, context) or None,
            class_column=self.parameterAsString(parameters, self.CLASS_COLUMN, context) or None,
            min_purity=self.parameterAsDouble(parameters, self.MIN_PURITY, context),
        )
        try:
            prefix = configured_prefix()
        except EnvironmentProblem as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(
            "running: " + " ".join([*prefix, "assess", request.map_path, "--reference", request.reference])
        )
        result = run_assess(prefix, request)
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        if result.error is not None:
            raise QgsProcessingException(result.error)
        for line in result.lines:
            feedback.pushInfo(line)
        with open(output, encoding="utf-8") as f:
            report = json.load(f)
        return {
            self.OUTPUT: output,
            self.OVERALL_ACCURACY: report["overall_accuracy"],
            self.KAPPA: report["kappa"],
        }


class GeobimorsProvider(QgsProcessingProvider):
    """The geobimors Processing provider."""

    def id(self):
        return "geobimors"

    def name(self):
        return "geobimors"

    def icon(self):
        return QIcon(ICON)

    def loadAlgorithms(self):
        self.addAlgorithm(MapSceneAlgorithm())
        self.addAlgorithm(EmbedSceneAlgorithm())
        self.addAlgorithm(SearchEmbeddingsAlgorithm())
        self.addAlgorithm(AssessAccuracyAlgorithm())

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg"]
