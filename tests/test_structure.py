"""The package's structure: one-way layers, no import circles, and nothing heavy imported to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    """The layers and no-circle contracts of pyproject.toml ([tool.importlinter]); the output names what broke."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_no_module_imports_the_package_root() -> None:
    """`geobimors/__init__.py` imports the layers (the public API); a module importing it back closes a circle."""
    graph = grimp.build_graph("geobimors", exclude_type_checking_imports=True, cache_dir=None)
    importers = sorted(graph.find_modules_that_directly_import("geobimors"))
    assert importers == [], f"import what you need from its own module (e.g. geobimors._version), not from {importers}"


HEAVY = ("torch", "torchvision", "open_clip", "transformers", "timm", "dask", "xarray", "pandas")


def _loaded_after(code: str) -> list[str]:
    """Heavy packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("loaded:"), done.stdout
    return [m for m in line.removeprefix("loaded:").split(",") if m]


def test_import_geobimors_loads_nothing_heavy() -> None:
    assert _loaded_after("import geobimors") == []


def test_help_loads_nothing_heavy() -> None:
    code = (
        "import contextlib, io, sys\nfrom geobimors.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'Usage: geobimors' in out.getvalue()"
    )
    assert _loaded_after(code) == []


def test_accessors_register_when_xarray_is_imported_later() -> None:
    code = (
        "import geobimors, sys\nassert 'xarray' not in sys.modules\nimport xarray as xr\n"
        "assert type(xr.DataArray([1.0]).geobimors).__name__ == 'GeobimorsDataArrayAccessor'\n"
        "assert type(xr.Dataset().geobimors).__name__ == 'GeobimorsDatasetAccessor'"
    )
    assert "xarray" in _loaded_after(code)
