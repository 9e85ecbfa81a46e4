"""The ``geobimors`` console script with its chip reads held back after a number of batches.

Tests that interrupt a run (SIGINT, SIGTERM, kill -9) need it to be still running when the
signal lands. A plain run of a small scene finishes in a fraction of a second, so on a loaded
machine the test could see N stored batches and then find the run already done. Here the first
``FAST`` batch reads run at full speed and every later read first waits ``DELAY`` seconds: the
test waits for ``FAST`` stored batches and interrupts a run that cannot have finished.

    python tests/throttled_cli.py FAST DELAY map scene.tif -l labels.txt ...
"""

from __future__ import annotations

import itertools
import sys
import time

from geobimors.raster.grid import Chip
from geobimors.raster.read import ChipBatch, ChipReader


def main() -> None:
    """Throttle :meth:`ChipReader.read_batch`, then run the console script on the remaining arguments."""
    fast, delay = int(sys.argv[1]), float(sys.argv[2])
    del sys.argv[1:3]
    reads = itertools.count()  # next() on a count is atomic under the GIL: reader threads share it
    read_batch = ChipReader.read_batch

    def held_back(self: ChipReader, chips: list[Chip]) -> ChipBatch:
        if next(reads) >= fast:
            time.sleep(delay)
        return read_batch(self, chips)

    ChipReader.read_batch = held_back  # type: ignore[method-assign]
    from geobimors.cli import main as cli_main

    cli_main()  # argv from sys.argv, as the console script (SIGTERM handled as there)


if __name__ == "__main__":
    main()
