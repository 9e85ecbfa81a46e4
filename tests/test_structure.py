"""The package's structure: one-way layers, no import circles, and nothing heavy imported to start."""

from __future__ import annotations

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
