"""What a map run writes beside its GeoPackage from the same image pass (``map --embeddings``).

The map pipeline knows only this protocol. The embeddings layer, above it, implements it
(:class:`geobimors.embeddings.embed.EmbeddingsRequest`), so the pipeline never imports the
store writer and the layers stay one-way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from geobimors.models.clip import ClipModel
    from geobimors.run.plan import ScenePlan
    from geobimors.run.store import RunStore
    from geobimors.run.tasks import BatchResult


class ByProduct(Protocol):
    """A second output of a map run, made from each batch's pooled image features.

    Its batches are kept in the run store as parts of kind :attr:`part_kind`, so an interrupted
    run resumes both outputs; a batch stored without them runs again.
    """

    @property
    def path(self) -> Path:
        """Where it is written (locked for the run, like the GeoPackage)."""
        ...

    @property
    def part_kind(self) -> str:
        """The run-store part kind of its batches."""
        ...

    def check(self, overwrite: bool) -> Path:
        """Fail before any work if it cannot be written; returns the resolved path."""
        ...

    def start(self, plan: ScenePlan, clip: ClipModel) -> None:
        """Called once the model is loaded, before the first batch."""
        ...

    def rows(self, result: BatchResult) -> pa.Table:
        """The rows of one finished batch, to keep in the run store."""
        ...

    def finish(self, store: RunStore, overwrite: bool) -> None:
        """Write the output, whole, from the batches kept in ``store``."""
        ...
