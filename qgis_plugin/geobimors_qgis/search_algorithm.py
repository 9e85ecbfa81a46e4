"""Processing algorithm "Search embeddings (geobimors)": runs ``geobimors search`` on a store."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .algorithm import GeobimorsAlgorithm
from .runner import EnvironmentProblem, SearchRequest, run_search
from .settings import configured_prefix

DEVICES = ["auto", "cpu", "cuda"]


class SearchEmbeddingsAlgorithm(GeobimorsAlgorithm):
    """Find the chips of an embeddings store that best match text queries or example features."""

    NAME = "searchembeddings"
    DISPLAY_NAME = "Search embeddings (geobimors)"
    GROUP = "Embeddings"
    GROUP_ID = "embeddings"

    STORE = "STORE"
    QUERIES = "QUERIES"
    LIKE = "LIKE"
    UNLIKE = "UNLIKE"
    EXTENT = "EXTENT"
    K = "K"
    MIN_SCORE = "MIN_SCORE"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    OUTPUT_RASTER = "OUTPUT_RASTER"

    def shortHelpString(self):
        return (
            "Ranks the chips of an embeddings store (made by 'Embed scene') by similarity to text queries "
            "(one per line, e.g. 'solar farm') and/or to examples: the chips under the points or polygons of "
            "an 'examples' layer, pushed away from those of a 'counter-examples' layer. Writes the best chips "
            "per query as a 'hits' layer (rank, score, query), styled by score; optionally a similarity "
            "raster with one score per chip (a heat map).\n\n"
            "No pixels are read: searching a store of a whole scene takes seconds. An index built with "
            "'geobimors index STORE' is used when present.\n\n"
            "The geobimors command line runs in the environment set in the geobimors panel's settings."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(
            QgsProcessingParameterFile(self.STORE, "Embeddings store", fileFilter="GeoParquet (*.parquet)")
        )
        self.addParameter(
            QgsProcessingParameterString(self.QUERIES, "Text queries (one per line)", multiLine=True, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.LIKE,
                "Examples (points or polygons over the scene)",
                [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.UNLIKE,
                "Counter-examples",
                [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Only within this extent", optional=True))
        self.addParameter(
            QgsProcessingParameterNumber(self.K, "Hits per query", QgsProcessingParameterNumber.Integer, 100, False, 1)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_SCORE, "Minimum score", QgsProcessingParameterNumber.Double, None, True, -1.0, 1.0
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device", options=DEVICES, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Hits", type=QgsProcessing.TypeVectorPolygon)
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_RASTER, "Similarity raster", optional=True, createByDefault=False
            )
        )

    def _examples(self, parameters, key, context, feedback):
        if parameters.get(key) in (None, ""):
            return []
        if self.parameterAsSource(parameters, key, context) is None:
            return []
        # A GeoPackage copy of the layer (or of its selection) that the CLI can read.
        return [self.parameterAsCompatibleSourceLayerPath(parameters, key, context, ["gpkg"], "gpkg", feedback)]

    def processAlgorithm(self, parameters, context, feedback):
        store = self.parameterAsFile(parameters, self.STORE, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not output.lower().endswith(".gpkg"):
            output = os.path.splitext(output)[0] + ".gpkg"
        queries = [q.strip() for q in self.parameterAsString(parameters, self.QUERIES, context).splitlines()]
        queries = [q for q in queries if q]
        like = self._examples(parameters, self.LIKE, context, feedback)
        unlike = self._examples(parameters, self.UNLIKE, context, feedback)
        if not queries and not like:
            raise QgsProcessingException("give text queries (one per line) or an examples layer")
        within = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context)
            crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            if not extent.isNull():
                within = f"{extent.xMinimum()!r},{extent.yMinimum()!r},{extent.xMaximum()!r},{extent.yMaximum()!r}"
                if crs.isValid():
                    within += "@" + (crs.authid() or crs.toWkt())
        raster = None
        if parameters.get(self.OUTPUT_RASTER) not in (None, ""):
            raster = self.parameterAsOutputLayer(parameters, self.OUTPUT_RASTER, context) or None
        min_score = None
        if parameters.get(self.MIN_SCORE) not in (None, ""):
            min_score = self.parameterAsDouble(parameters, self.MIN_SCORE, context)
        request = SearchRequest(
            store=store,
            output=output,
            queries=queries,
            like=like,
            unlike=unlike,
            k=self.parameterAsInt(parameters, self.K, context),
            within=within,
            min_score=min_score,
            raster=raster,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
        )
        try:
            prefix = configured_prefix()
        except EnvironmentProblem as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo("running: " + " ".join([*prefix, "search", store, *queries, "-o", output]))
        result = run_search(prefix, request, feedback.setProgress, feedback.isCanceled)
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        if result.cancelled:
            raise QgsProcessingException("cancelled")
        if result.error is not None:
            raise QgsProcessingException(result.error)
        outputs = {self.OUTPUT: output}
        if raster:
            outputs[self.OUTPUT_RASTER] = raster
        return outputs
