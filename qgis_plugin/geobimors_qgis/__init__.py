"""geobimors QGIS plugin: map scenes with vision-language models from QGIS.

A thin layer over the ``geobimors`` command line: it never imports torch or
geobimors' model code, and runs the CLI from the Python environment set in the
plugin settings.
"""


def classFactory(iface):
    """Create the plugin (called by QGIS)."""
    from .plugin import GeobimorsPlugin

    return GeobimorsPlugin(iface)
