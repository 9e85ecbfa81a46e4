"""Re-labelling from the store: new labels (or a head) over stored embeddings, no pixels read.

``map --from-embeddings STORE --labels new.txt`` streams the store's row groups
through a head's :meth:`~geobimors.heads.base.Head.logits_from_embeddings` and
writes the same chips layer a full ``map`` run writes (same columns, polygons,
style and metadata), in seconds instead of hours. Only the text side runs (the
class prompts, once); memory stays flat with store size.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.crs import CRS

from geobimors._version import __version__
from geobimors.embeddings.dataset import StoreSet, open_stores, reproject
from geobimors.embeddings.store import CAPTION, CAPTION_EMBEDDING, EMBEDDING, EmbeddingStore
from geobimors.errors import InputError, ModelError, check_at_least_one
from geobimors.heads.base import Head, works_from_embeddings
from geobimors.heads.classifier import ClassifierSpec, get_classifier
from geobimors.labels import Label
from geobimors.progress import Progress
from geobimors.run.plan import Batch
from geobimors.run.store import RunLock, label_columns, result_table
from geobimors.run.tasks import BatchResult

DEFAULT_BATCH_ROWS = 16_384  # one row group: memory holds one at a time
CHUNK_ROWS = 20_000  # records per written chunk (fewer, larger writes; bounded memory)


@dataclass(frozen=True)
class Part:
    """Where records come from: one store file's scene, its transform and CRS.

    Attributes:
        transform: the scene's pixel-to-CRS transform (records hold pixel windows).
        crs: the scene's CRS.
        scene: the scene, for the ``scene`` column of a set of stores (``None`` for one store).
        target: the CRS of the output (the set's; ``crs`` for one store).
    """

    transform: Affine
    crs: CRS | None
    scene: str | None = None
    target: CRS | None = None


@dataclass
class Relabeller:
    """A store and the head that labels its embeddings.

    Attributes:
        store: the opened store.
        head: the head (its CLIP model is the store's).
        spec: the classifier spec the head was built from.
        top_k: best labels kept per chip.
    """

    store: EmbeddingStore | StoreSet
    head: Head
    spec: ClassifierSpec
    top_k: int

    @property
    def class_names(self) -> list[str]:
        """Label names in output order."""
        return self.spec.class_names

    @property
    def uses_caption_features(self) -> bool:
        """True when the head reads the stored caption embeddings."""
        return bool(self.head.uses_captions)

    def records(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
        """Chip records (as :func:`geobimors.run.store.result_table` makes them) batch by batch."""
        for _, table in self.record_parts(batch_rows):
            yield table

    def record_parts(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[tuple[Part, pa.Table]]:
        """Chip records batch by batch, each with the :class:`Part` (store file) it comes from."""
        if isinstance(self.store, StoreSet):
            target = self.store.crs
            for member, store in self.store.iter_members():
                part = Part(member.meta.scene_transform, member.meta.crs, member.meta.scene, target)
                for table in self._records(store, batch_rows):
                    yield part, table
        else:
            part = Part(self.store.meta.scene_transform, self.store.meta.crs, None, self.store.meta.crs)
            for table in self._records(self.store, batch_rows):
                yield part, table

    def _records(self, store: EmbeddingStore, batch_rows: int) -> Iterator[pa.Table]:
        columns = ["row", "col", "pixel_bbox", "valid_fraction", EMBEDDING]
        if store.meta.has_captions:
            columns.append(CAPTION)
        if self.uses_caption_features:
            columns.append(CAPTION_EMBEDDING)
        device = self.head.clip.device
        for index, batch in enumerate(store.iter_batches(columns, batch_rows)):
            features = torch.from_numpy(store.embeddings_of(batch)).to(device)
            features = F.normalize(features, dim=-1)  # float16 storage leaves norms within ~1e-3 of 1
            caption_features = None
            if self.uses_caption_features:
                caption_features = torch.from_numpy(store.embeddings_of(batch, CAPTION_EMBEDDING)).to(device)
            with torch.no_grad():
                probs = self.head.logits_from_embeddings(features, caption_features).float().softmax(dim=-1).cpu()
            top = torch.topk(probs, min(self.top_k, probs.shape[1]), dim=1)
            n = batch.num_rows
            box = np.asarray(batch.column("pixel_bbox").flatten().to_numpy(), dtype=np.int64).reshape(-1, 4)
            windows = np.stack([box[:, 0], box[:, 1], box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], axis=1)
            result = BatchResult(
                batch=Batch(index, 0, n),
                rows=batch.column("row").to_numpy(),
                cols=batch.column("col").to_numpy(),
                windows=windows,
                valid_fraction=batch.column("valid_fraction").to_numpy(),
                classified=np.ones(n, dtype=bool),
                top_index=top.indices.numpy().astype(np.int32),
                top_score=top.values.numpy().astype(np.float32),
                captions=batch.column(CAPTION).to_pylist() if store.meta.has_captions else None,
            )
            yield result_table(result, self.class_names, self.top_k)

    def to_frame(self, part: Part, table: pa.Table) -> gpd.GeoDataFrame:
        """The chips layer rows of some records: polygons in the output CRS (and ``scene`` for a set)."""
        from geobimors.vector.gpkg import records_to_frame

        frame = records_to_frame(table, part.transform, part.crs, self.output_columns(), self.extra_columns())
        if part.scene is None:
            return frame
        frame.insert(0, "scene", part.scene)
        geometry = reproject(np.asarray(frame.geometry.values), part.crs, part.target)
        return gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=geometry, crs=part.target)

    def output_columns(self) -> list[str]:
        """Label/score (and caption) columns of the chips layer, as ``map`` writes them."""
        columns = [name for pair in label_columns(self.top_k) for name in pair]
        return [*columns, "caption"] if self.store.meta.has_captions else columns

    def extra_columns(self) -> dict[str, str]:
        """Constant attributes of every chip, as ``map`` writes them."""
        extra = {"model": self.spec.model}
        if self.spec.head:
            extra["head"] = Path(self.spec.head).name
        return extra

    def describe(self) -> dict[str, str]:
        """Run metadata of the output, as ``map`` writes it (plus the store it came from)."""
        if isinstance(self.store, StoreSet):
            return self._describe_set(self.store)
        meta = self.store.meta
        grid = meta.grid
        head = f"{self.head.kind} ({self.spec.head})" if self.spec.head else "zero-shot"
        scaling = meta.scaling
        return {
            "geobimors_version": __version__,
            "scene": meta.scene,
            "model": self.spec.model,
            "head": head,
            "labels": ", ".join(self.class_names),
            "grid": (
                f"{grid['n_rows']} x {grid['n_cols']} chips of {grid['chip'][0]} x {grid['chip'][1]} px, "
                f"stride {grid['step'][0]} x {grid['step'][1]} px"
            ),
            "bands": ",".join(map(str, meta.bands)),
            "scaling": (
                ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(scaling["low"], scaling["high"]))
                + f" ({scaling['method']})"
                if scaling
                else "8-bit, unchanged"
            ),
            "embeddings_store": str(self.store.path),
        }

    def _describe_set(self, stores: StoreSet) -> dict[str, str]:
        meta = stores.meta
        head = f"{self.head.kind} ({self.spec.head})" if self.spec.head else "zero-shot"
        return {
            "geobimors_version": __version__,
            "scenes": json.dumps(stores.scenes),
            "model": self.spec.model,
            "head": head,
            "labels": ", ".join(self.class_names),
            "grid": f"{len(stores.members)} scenes, chips of {meta.chip_size[0]} x {meta.chip_size[1]} px",
            "crs": stores.crs.to_string() if stores.crs is not None else "none (pixel coordinates)",
            "embeddings_store": str(stores.path),
        }


def open_relabeller(
    store: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | EmbeddingStore | StoreSet,
    labels: Sequence[Label] = (),
    head: str | os.PathLike[str] | None = None,
    model: str | None = None,
    top_k: int = 3,
    device: str = "auto",
    precision: str = "fp32",
    literal_labels: bool = False,
) -> Relabeller:
    """Open a store and build the head that labels it, refusing mismatches up front.

    Args:
        store: the store (path or opened).
        labels: the classes (default: the ``head``'s training classes).
        head: a trained head checkpoint (``None``: zero-shot).
        model: the CLIP model (default: the head's, else the store's); its weights must be the store's.
        top_k: best labels kept per chip.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: precision of the text side.
        literal_labels: zero-shot: read every label as written (no label anchoring).

    Raises:
        InputError: for a bad store, too few labels or bad ``top_k``.
        ModelError: for a model or head made for other weights, or a head that needs pixels.
    """
    from geobimors.heads.checkpoint import checkpoint_labels, read_metadata

    opened = open_stores(store)
    check_at_least_one(top_k, "--top-k")
    metadata = read_metadata(Path(head)) if head is not None else None
    name = model or (str(metadata["clip_model"]) if metadata else opened.meta.model)
    chosen = tuple(labels) or (tuple(checkpoint_labels(metadata)) if metadata else ())
    if len(chosen) < 2:
        raise InputError("classification needs at least two labels; pass --labels FILE")
    if literal_labels and head is not None:
        from geobimors.run.plan import LITERAL_WITH_HEAD

        raise InputError(LITERAL_WITH_HEAD)
    if metadata is not None and metadata["clip_fingerprint"] != opened.meta.model_fingerprint:
        raise ModelError(
            f"head {Path(head or '').name} was trained for CLIP {metadata['clip_model']!r} "
            f"(weights {metadata['clip_fingerprint']}), but store {opened.path.name} holds embeddings of "
            f"{opened.meta.model!r} (weights {opened.meta.model_fingerprint}); re-embed the scene with "
            f"--model {metadata['clip_model']}, or use a head trained for {opened.meta.model}"
        )
    head_path = str(Path(head).absolute()) if head is not None else None
    spec = ClassifierSpec(name, chosen, device, precision, head=head_path, literal_labels=literal_labels)
    from geobimors.models.clip import load_model

    opened.check_model(name, load_model(name, device, precision).fingerprint)
    built = get_classifier(spec).head
    if not works_from_embeddings(built):
        raise ModelError(
            f"the {built.kind} head needs the visual tokens of every chip, which an embeddings store does not "
            "hold; run geobimors map on the scene with this head instead"
        )
    if built.uses_captions and not opened.meta.has_caption_embeddings:
        raise ModelError(
            f"the {built.kind} head reads caption embeddings, which store {opened.path.name} does not hold; "
            "re-embed the scene with geobimors embed --captions"
        )
    return Relabeller(opened, built, spec, min(top_k, len(chosen)))


def classify_embeddings(
    store: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | EmbeddingStore | StoreSet,
    labels: Sequence[str | Label] | str | os.PathLike[str] = (),
    head: str | os.PathLike[str] | None = None,
    model: str | None = None,
    top_k: int = 3,
    device: str = "auto",
    precision: str = "fp32",
) -> Any:
    """Label the chips of an embeddings store without reading pixels.

    Args:
        store: a store written by ``geobimors embed`` or ``map --embeddings`` (path or opened).
        labels: label names, :class:`~geobimors.labels.Label` objects, or a labels file.
        head: a trained head checkpoint that works from pooled embeddings (``None``: zero-shot).
        model: the CLIP model (default: the store's); must have the store's weights.
        top_k: best labels kept per chip.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: precision of the text side.

    Returns:
        A GeoDataFrame with the columns of ``map``'s chips layer, in the scene CRS.
    """
    import pandas as pd

    relabeller = open_relabeller(store, _labels(labels), head, model, top_k, device, precision)
    frames = [relabeller.to_frame(part, table) for part, table in relabeller.record_parts()]
    if not frames:
        meta = relabeller.store.meta
        empty = result_table(_empty_result(relabeller.top_k), relabeller.class_names, relabeller.top_k)
        part = Part(meta.scene_transform, meta.crs, None, meta.crs)
        return relabeller.to_frame(part, empty)
    crs = frames[0].crs
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)


def _empty_result(k: int) -> BatchResult:
    empty = np.zeros(0, dtype=np.int32)
    return BatchResult(
        Batch(0, 0, 0),
        empty,
        empty,
        np.zeros((0, 4), np.int64),
        np.zeros(0, np.float32),
        np.zeros(0, bool),
        np.zeros((0, k), np.int32),
        np.zeros((0, k), np.float32),
    )


def _labels(labels: Sequence[str | Label] | str | os.PathLike[str]) -> list[Label]:
    from geobimors.labels import labels_from_names, read_labels

    if isinstance(labels, (str, os.PathLike)):
        return list(read_labels(Path(labels)))
    if all(isinstance(label, Label) for label in labels):
        return [label for label in labels if isinstance(label, Label)]
    return list(labels_from_names([str(label) for label in labels])) if labels else []


@dataclass
class RelabelSummary:
    """What a re-labelling run did.

    Attributes:
        output: the GeoPackage written.
        n_classified: chips labelled.
        label_counts: chips per label (top-1).
        elapsed: seconds from start to end.
        load_seconds: of which loading the model and encoding the class prompts.
        label_seconds: of which labelling the embeddings (without writing the output).
    """

    output: Path
    n_classified: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    load_seconds: float = 0.0
    label_seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [f"chips: {self.n_classified} labelled from stored embeddings (no pixels read)"]
        rate = f", {self.n_classified / self.label_seconds:,.0f} chips/s labelling" if self.label_seconds > 0 else ""
        out.append(f"time: {self.elapsed:.1f} s (model loading {self.load_seconds:.1f} s){rate}")
        if self.label_counts:
            width = max(len(name) for name in self.label_counts)
            out.append("labels:")
            for name, count in self.label_counts.most_common():
                share = 100.0 * count / max(self.n_classified, 1)
                out.append(f"  {name:<{width}}  {count:>7}  {share:5.1f}%")
        out.append(f"output: {self.output}")
        return out


def relabel_to_file(
    relabeller: Relabeller,
    output: str | os.PathLike[str],
    overwrite: bool = False,
    regions: bool = False,
    progress_mode: str = "bar",
    load_seconds: float = 0.0,
) -> RelabelSummary:
    """Write the chips layer of a re-labelled store to a GeoPackage (atomically, under a lock).

    Args:
        relabeller: the store and head (:func:`open_relabeller`).
        output: the ``.gpkg`` to write.
        overwrite: replace an existing output.
        regions: also write a ``regions`` layer of dissolved same-label chips.
        progress_mode: ``bar``, ``jsonl`` or ``none``.
        load_seconds: time already spent loading (for the summary).
    """
    from geobimors.vector.gpkg import GeoPackageWriter, check_output

    start = time.monotonic() - load_seconds
    out = check_output(output, overwrite)
    if relabeller.store.n_rows == 0:
        raise InputError(
            f"embeddings store {relabeller.store.path} holds no chips (no chip of its scene had enough valid "
            "pixels), so there is nothing to label; embed the scene again with other --nodata or --min-valid"
        )
    summary = RelabelSummary(out, load_seconds=load_seconds)
    progress = Progress(relabeller.store.n_rows, progress_mode, desc="labels")
    with RunLock(out), GeoPackageWriter(out, overwrite, relabeller.describe()) as writer:
        try:
            for part, table in _chunks(_timed(relabeller.record_parts(), summary, progress)):
                frame = relabeller.to_frame(part, table)
                summary.n_classified += len(frame)
                summary.label_counts.update(frame["label"].dropna())
                writer.append(frame)
            writer.finish(relabeller.class_names, regions=regions)
        finally:
            progress.close()
    summary.elapsed = time.monotonic() - start
    progress.event("done", output=str(out), failed=0)
    return summary


def _timed(
    parts: Iterator[tuple[Part, pa.Table]], summary: RelabelSummary, progress: Progress
) -> Iterator[tuple[Part, pa.Table]]:
    while True:
        began = time.monotonic()
        item = next(parts, None)
        summary.label_seconds += time.monotonic() - began
        if item is None:
            return
        progress.update(item[1].num_rows)
        yield item


def _chunks(parts: Iterator[tuple[Part, pa.Table]], rows: int = CHUNK_ROWS) -> Iterator[tuple[Part, pa.Table]]:
    """Consecutive record tables of one store file concatenated into chunks of about ``rows`` rows."""
    pending: list[pa.Table] = []
    current: Part | None = None
    count = 0
    for part, table in parts:
        if pending and (part != current or count >= rows):
            assert current is not None
            yield current, pa.concat_tables(pending)
            pending, count = [], 0
        current = part
        pending.append(table)
        count += table.num_rows
    if pending and current is not None:
        yield current, pa.concat_tables(pending)
