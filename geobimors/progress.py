"""Progress reporting: a tqdm bar (terminal or Jupyter), JSON lines for programs, or nothing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

PROGRESS_MODES = ("bar", "jsonl", "none")


class Progress:
    """Counts chips as batches finish.

    Args:
        total: chips in the run.
        mode: ``bar`` (tqdm; notebook widget in Jupyter), ``jsonl`` (one JSON
            object per update on ``stream``, for programs such as the QGIS
            plugin), or ``none``.
        desc: label of the bar.
        initial: chips already done (resumed runs).
        stream: where bars and JSON lines go (stderr by default).
        unit: what is counted (the bar shows ``unit/s``).
        fields: added to every JSON line (see :meth:`set_fields`).
    """

    def __init__(
        self,
        total: int,
        mode: str = "bar",
        desc: str = "chips",
        initial: int = 0,
        stream: TextIO | None = None,
        unit: str = "chip",
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.total = total
        self.done = initial
        self.mode = mode
        self.stream = stream or sys.stderr
        self._start = time.monotonic()
        self._bar: Any = None
        self.fields: dict[str, Any] = dict(fields or {})
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)
        elif mode == "jsonl":
            self.event("start", desc=desc)

    def event(self, kind: str, **fields: Any) -> None:
        """Write a JSON line (``jsonl`` mode only)."""
        if self.mode != "jsonl":
            return
        record = {
            "event": kind,
            "done": self.done,
            "total": self.total,
            "elapsed": round(time.monotonic() - self._start, 3),
            **self.fields,
            **fields,
        }
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def set_fields(self, **fields: Any) -> None:
        """Fields added to every later JSON line and shown after the bar (e.g. ``scenes_done=3``)."""
        self.fields.update(fields)
        if self._bar is not None and "scenes_done" in self.fields:
            self._bar.set_postfix_str(f"scenes {self.fields['scenes_done']}/{self.fields.get('scenes_total')}", False)

    def update(self, n: int) -> None:
        """Count ``n`` more chips done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        self.event("progress")

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
