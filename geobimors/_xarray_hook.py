"""Register the ``.geobimors`` xarray accessors without importing xarray at ``import geobimors``.

xarray (and pandas with it) takes longer to import than the command line takes to start, and
the command line never uses it. ``import geobimors`` registers the accessors at once when
xarray is already imported, and otherwise as soon as anything imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

_lock = threading.Lock()


def register_accessors() -> None:
    """Register the accessors now if xarray is loaded, else when it is first imported."""
    if "xarray" in sys.modules:
        _register()
        return
    with _lock:
        if not any(isinstance(finder, _XarrayFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _XarrayFinder())


def _register() -> None:
    import geobimors.accessor  # noqa: F401  (registers .geobimors on xarray objects)


class _XarrayFinder(importlib.abc.MetaPathFinder):
    """Finds xarray like the other finders do, and registers the accessors once it has loaded."""

    def __init__(self) -> None:
        self._searching = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "xarray" or getattr(self._searching, "active", False):
            return None
        self._searching.active = True
        try:
            spec = importlib.util.find_spec(fullname)  # the real finders (this one steps aside)
        finally:
            self._searching.active = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec
