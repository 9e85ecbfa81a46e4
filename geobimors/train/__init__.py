"""Training and evaluation of heads: data, few-shot training loop, metrics.

``geobimors.train`` is also the public training function. Importing any module of this
package makes Python bind the package itself to the name ``geobimors.train``, replacing
that function; the package is therefore callable, with the function's signature, so
``geobimors.train(...)`` works however often it is called and whatever was imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, data: Any, output: Any, **options: Any) -> Any:
        """Train a few-shot head and save it (see :func:`geobimors.train.api.train`)."""
        from geobimors.train.api import train

        return train(data, output, **options)


sys.modules[__name__].__class__ = _CallablePackage
