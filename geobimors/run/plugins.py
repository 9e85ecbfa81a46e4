"""Dask worker plugins (imported only when a cluster is used)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class TorchThreads(WorkerPlugin):
    """Each worker process gives torch its share of the machine's cores.

    Without it, every worker process would start one torch thread per core and
    N workers would oversubscribe the CPU N times.

    Args:
        threads: torch intra-op threads per worker process.
    """

    name = "geobimors-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        """Set torch's intra-op threads in the worker process."""
        import torch

        torch.set_num_threads(self.threads)
