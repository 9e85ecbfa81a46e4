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
    def __call__(self, data: Any, output: Any, progress: bool | str = False, **options: Any) -> Any:
        """Train a few-shot head and save it (see :func:`geobimors.train.api.train`).

        Quiet unless ``progress`` is ``True`` (a bar), ``"bar"`` or ``"jsonl"``.
        """
        from geobimors.train.api import train

        mode = ("bar" if progress else "none") if isinstance(progress, bool) else progress
        return train(data, output, progress=mode, **options)


sys.modules[__name__].__class__ = _CallablePackage
