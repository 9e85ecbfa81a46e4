"""The quickstart notebook runs end to end on the sample data with the bundled model."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_quickstart_notebook_executes() -> None:
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    output = EXAMPLES / "quickstart.gpkg"
    output.unlink(missing_ok=True)
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
        ).execute()
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs)  # the label map was plotted
        chips = gpd.read_file(output, layer="chips")
        assert len(chips) > 100 and chips.crs.to_epsg() == 31985
    finally:
        output.unlink(missing_ok=True)
