"""Planning a mapping run: validate every input up front, then cut the work into batches.

Everything that can be checked before the first chip is read is checked here,
so bad input fails in a second with a clear message instead of after an hour.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from geobimors._version import __version__
from geobimors.errors import InputError, check_at_least_one, warn
from geobimors.heads.classifier import ClassifierSpec
from geobimors.labels import Label
from geobimors.models.captions import CaptionerSpec
from geobimors.models.clip import DEFAULT_VIEW_BLEND, check_tta, resolve_model_name
from geobimors.models.views import check_views
from geobimors.raster.grid import Chip, ChipGrid, GridSpec, build_grid, metres_per_unit
from geobimors.raster.identity import scene_identity
from geobimors.raster.read import ReadSpec
from geobimors.raster.safety import is_user_url, network_guard
from geobimors.raster.scaling import scene_scale_range
from geobimors.raster.scene import SceneInfo, open_scene, select_bands

DEFAULT_MODEL = "mini"
# Largest grid run without --max-chips: a 45,000 x 45,000 px scene in 32 px chips, or
# ~100,000 km2 of 10 m imagery in 224 px chips; more is usually a wrong --chip-size or --gsd.
DEFAULT_MAX_CHIPS = 2_000_000
# Upsampling a coarse scene by more than this to a model's native GSD is refused unless --gsd is given.
MAX_DEFAULT_UPSAMPLING = 4.0
# A chip is one read and one model input: an edge of more pixels than this is a wrong --chip-size
# (or --gsd); the model resizes every chip to its input size (224 px for most CLIPs) anyway.
MAX_CHIP_EDGE = 16_384
# Chips per task and forward pass: beyond this a batch's pixels alone take gigabytes.
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class Batch:
    """A task's share of the work: chips ``start`` to ``stop - 1`` of the grid, row-major.

    Attributes:
        index: batch number (results are written in this order).
        start: first linear chip index.
        stop: one past the last linear chip index.
    """

    index: int
    start: int
    stop: int

    def chips(self, grid: ChipGrid) -> list[Chip]:
        """The chips of this batch."""
        return list(grid.chips(self.start, self.stop))


@dataclass(frozen=True)
class MapSettings:
    """The options of a mapping run (the ``geobimors map`` options, as values).

    Attributes:
        scene: path or URL of the scene.
        labels: the classes.
        model: model name.
        chip_size: chip size (``224``, ``640m``); ``None`` uses the model's default.
        overlap: overlap between chips (pixels or ground units).
        gsd: target ground resolution in m/px; ``None`` picks one for the model
            (:func:`default_gsd`: the scene's resolution moved into the range the
            model was trained on, or its native resolution), else the scene's.
        keep_scene_gsd: never resample (``--gsd scene``).
        bands: 1-based band indexes (3 for RGB, 1 for grey); ``None`` chooses.
        scale_range: manual 8-bit scaling range (``MIN,MAX`` or six numbers).
        percentiles: percentiles for automatic scaling of non-8-bit data.
        nodata: nodata value overriding the scene's masks.
        min_valid: skip chips with a smaller fraction of valid pixels.
        batch_size: chips per task and per forward pass.
        top_k: number of best labels to keep per chip.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        allow_no_crs: accept scenes without a CRS.
        head: trained head checkpoint (``None``: zero-shot). Without ``labels``
            the head's training classes are used; without ``model``, its CLIP.
        caption_batch_size: chips per captioning task (captioning is a stage of its own).
        allow_network: let a local scene file (a VRT, ...) read sources over the
            network; a URL given as ``scene`` always may.
        allow_no_geotransform: map a scene with a CRS but no geotransform in
            pixel coordinates instead of refusing it.
        max_chips: refuse grids with more chips than this (a mistake, usually).
        captioner: also caption every classified chip into a ``caption`` column, whatever the
            head (``None``: only a head that reads captions makes them).
        tta: test-time augmentation: classify the mean image features of 1 (off), 2, 4 or 8
            turned and mirrored views of each chip (``--tta``; N views cost N image passes).
        views: detail views (``--views``): 1 (off); 5 or 6 read each chip at twice the pixels and
            classify its features blended with its quadrants' (and centre crop's), each seen at
            twice the detail (:meth:`geobimors.models.clip.ClipModel.embed_chips`).
        view_blend: the sub-views' weight (``--view-blend``; ``None``: the default, 0.5).
        literal_labels: read every zero-shot label as written (``--literal-labels``): no anchoring
            of labels the bundled model was not trained on (:mod:`geobimors.models.anchors`).
    """

    scene: str
    labels: tuple[Label, ...] = ()
    model: str | None = None
    chip_size: str | None = None
    overlap: str = "0"
    gsd: float | None = None
    keep_scene_gsd: bool = False
    bands: tuple[int, ...] | None = None
    scale_range: str | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    nodata: float | None = None
    min_valid: float = 0.5
    batch_size: int = 32
    top_k: int = 3
    device: str = "auto"
    precision: str = "fp32"
    allow_no_crs: bool = False
    head: str | None = None
    caption_batch_size: int = 16
    allow_network: bool = False
    allow_no_geotransform: bool = False
    max_chips: int = DEFAULT_MAX_CHIPS
    captioner: CaptionerSpec | None = None
    tta: int = 1
    views: int = 1
    view_blend: float | None = None
    literal_labels: bool = False


@dataclass
class ScenePlan:
    """A validated run: the scene, its chip grid, how to read chips, and the batches.

    Attributes:
        settings: the settings the plan was made from.
        scene: the scene description.
        grid: the chip grid.
        read: how tasks read chips.
        classifier: how tasks build the classifier.
        band_description: which bands make the RGB chips.
    """

    settings: MapSettings
    scene: SceneInfo
    grid: ChipGrid
    read: ReadSpec
    classifier: ClassifierSpec
    band_description: str
    head_kind: str = "zero-shot"
    captioner: CaptionerSpec | None = None

    @property
    def writes_captions(self) -> bool:
        """True when chips get a caption attribute."""
        return self.captioner is not None

    @property
    def captioning_stage(self) -> bool:
        """True when captions are made by a stage of their own, before classification.

        Otherwise the classifier captions from its own image pass (the bundled model and captioner).
        """
        return self.captioner is not None and self.classifier.captioner is None

    @property
    def n_batches(self) -> int:
        """Number of batches (tasks)."""
        return -(-len(self.grid) // self.settings.batch_size)

    def batch(self, index: int, size: int | None = None) -> Batch:
        """The ``index``-th batch of ``size`` chips (default: the batch size), row-major."""
        size = size or self.settings.batch_size
        start = index * size
        return Batch(index, start, min(start + size, len(self.grid)))

    @property
    def n_caption_batches(self) -> int:
        """Number of captioning tasks."""
        return -(-len(self.grid) // self.settings.caption_batch_size)

    @property
    def n_chips(self) -> int:
        """Number of chips in the grid."""
        return len(self.grid)

    @property
    def top_k(self) -> int:
        """Best labels kept per chip (at most the number of labels)."""
        return min(self.settings.top_k, len(self.classifier.labels))

    def fingerprint(self) -> str:
        """Hash of everything that determines the output (resume refuses a different one).

        The scene counts by its path, shape and transform and, for a local file, by the size and
        modification time of its files (:func:`geobimors.raster.identity.scene_identity`): a scene
        rewritten since an interrupted run is not resumed into it.
        """
        s = self.settings
        payload = {
            "scene": self.scene.path,
            "scene_shape": [self.scene.width, self.scene.height, self.scene.count],
            "transform": list(self.scene.transform)[:6],
            "labels": [asdict(label) for label in self.classifier.labels],
            "model": self.classifier.model,
            "head": _file_digest(s.head) if s.head else None,
            "templates": list(self.classifier.templates),
            "grid": [
                self.grid.chip_width,
                self.grid.chip_height,
                self.grid.stride_x,
                self.grid.stride_y,
                self.grid.out_width,
                self.grid.out_height,
            ],
            "bands": list(self.read.bands),
            "scale": asdict(self.read.scale) if self.read.scale else None,
            "nodata": s.nodata,
            "min_valid": s.min_valid,
            "batch_size": s.batch_size,
            "top_k": self.top_k,
            "precision": s.precision,
        }
        if self.captioner is not None:  # added only when set: plans without captions keep their fingerprints
            payload["captioner"] = asdict(self.captioner)
        if self.classifier.tta != 1:  # likewise
            payload["tta"] = self.classifier.tta
        if self.classifier.views != 1:  # likewise
            payload["views"] = [self.classifier.views, self.classifier.view_blend]
        if self.anchored_labels:  # likewise; a run begun before label anchoring is not resumed into
            payload["anchored_labels"] = self.anchored_labels
        identity = scene_identity(self.scene.path)
        if identity is not None:  # a rewritten local scene file is another run; URLs have none (fingerprint as before)
            payload["scene_file"] = identity
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]

    @property
    def anchored_labels(self) -> list[str]:
        """Zero-shot labels the bundled model reads through its nearest trained classes (geobimors.models.anchors)."""
        from geobimors.models import bundled

        source = resolve_model_name(self.classifier.model)
        if self.settings.head or self.classifier.literal_labels or source.kind != "bundled":
            return []
        return bundled.anchored_prompts(source.arch, [label.prompt for label in self.classifier.labels])

    def describe(self) -> dict[str, str]:
        """Key facts for the summary and the output's metadata."""
        return {
            "geobimors_version": __version__,
            "scene": self.scene.path,
            "model": self.classifier.model,
            "head": f"{self.head_kind} ({self.settings.head})" if self.settings.head else "zero-shot",
            "labels": ", ".join(self.classifier.class_names),
            **(
                {"anchored_labels": f"{', '.join(self.anchored_labels)} (read through the nearest trained classes)"}
                if self.anchored_labels
                else {}
            ),
            "grid": self.grid.describe(),
            "bands": self.band_description,
            "scaling": self.read.scale.describe() if self.read.scale else "8-bit, unchanged",
            **({"captioner": self.captioner.name} if self.captioner is not None else {}),
            **({"tta": f"{self.classifier.tta} turned/mirrored views"} if self.classifier.tta > 1 else {}),
            **(
                {"views": f"chip + {self.classifier.views - 1} detail views, blend {self.classifier.view_blend:g}"}
                if self.classifier.views > 1
                else {}
            ),
        }


LITERAL_WITH_HEAD = (
    "--literal-labels is for zero-shot labels; drop it with --head (a head's text was fixed when it was trained)"
)


def model_defaults(model: str) -> tuple[int | None, float | None]:
    """(default chip size, native GSD) a model declares, without loading its weights."""
    from geobimors.models import bundled

    source = resolve_model_name(model)
    if source.kind == "bundled":
        return bundled.declared_geometry(source.arch)
    return None, None


def default_gsd(scene: SceneInfo, model: str, quiet: bool = False) -> float | None:
    """The chip resolution (m/px) used when ``--gsd`` is not given; ``None``: the scene's own.

    A model that declares the range of ground resolutions it was trained on gets the scene's
    resolution moved into that range, and no finer than its ``default_gsd_floor`` if it declares
    one. For mini: a 5 m satellite image stays at 5 m; a 0.3 m aerial photo or a 0.1 m drone
    image goes to 1.2 m, where a 64 px chip covers what a UC Merced image does; a scene a little
    coarser than the native resolution (up to ``native_upsampling``: a 28.5 m Landsat scene for
    mini's 10 m) goes to the native one, as the model was trained on such blurred chips; a
    coarser one to the nearest trained resolution, but never upsampled more than
    ``MAX_DEFAULT_UPSAMPLING`` times (with a warning unless ``quiet``). A model that declares only
    a native resolution gets that; other models and scenes without a CRS keep the scene's
    resolution.
    """
    from geobimors.models import bundled

    if scene.crs is None:
        return None
    _, native_gsd = model_defaults(model)
    source = resolve_model_name(model)
    gsd_range = bundled.declared_gsd_range(source.arch) if source.kind == "bundled" else None
    if gsd_range is None or native_gsd is None:
        return native_gsd
    per_x, per_y = metres_per_unit(scene, quiet=True)
    scene_gsd = min(scene.pixel_size[0] * per_x, scene.pixel_size[1] * per_y)
    finest, coarsest = gsd_range
    if native_gsd < scene_gsd <= native_gsd * bundled.declared_native_upsampling(source.arch):
        return native_gsd
    floor = bundled.declared_default_gsd_floor(source.arch) or finest
    gsd = min(max(scene_gsd, floor), coarsest)
    if scene_gsd / gsd > MAX_DEFAULT_UPSAMPLING:
        gsd = scene_gsd / MAX_DEFAULT_UPSAMPLING
        if not quiet:
            warn(
                f"scene {scene.name} ({scene_gsd:.3g} m/px) is coarser than model {model} was trained on "
                f"({finest:g}-{coarsest:g} m/px): chips are upsampled {MAX_DEFAULT_UPSAMPLING:g}x to {gsd:.3g} m/px"
            )
    return float(gsd)


def plan_reading(settings: MapSettings, model: str) -> tuple[SceneInfo, ChipGrid, ReadSpec, str]:
    """Open the scene and work out its chip grid and how to read chips (no labels needed).

    Returns:
        The scene, the grid, the read spec and a description of the bands used.

    Raises:
        InputError: for bad scenes, bands, sizes or scaling options.
    """
    if not 0.0 <= settings.min_valid <= 1.0:
        raise InputError(f"--min-valid must be between 0 and 1, got {settings.min_valid}")
    low, high = settings.percentiles
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"--percentiles {low:g},{high:g}: expected 0 <= LOW < HIGH <= 100, such as 2,98")
    default_chip, _ = model_defaults(model)
    check_at_least_one(settings.max_chips, "--max-chips")
    scene = open_scene(
        settings.scene,
        allow_no_crs=settings.allow_no_crs,
        allow_network=settings.allow_network,
        allow_no_geotransform=settings.allow_no_geotransform,
    )
    network_ok = settings.allow_network or is_user_url(settings.scene)
    selection = select_bands(scene, settings.bands)
    chip_size = settings.chip_size if settings.chip_size is not None else (default_chip or 224)
    gsd = settings.gsd
    if gsd is None and not settings.keep_scene_gsd:
        gsd = default_gsd(scene, model)
    grid = build_grid(scene, GridSpec.parse(chip_size, settings.overlap, gsd))
    _check_upsampling(scene, grid, model, chosen_by_user=settings.gsd is not None)
    if settings.views > 1:  # the same footprints at twice the pixels: the sub-views' detail
        grid = replace(grid, out_width=2 * grid.out_width, out_height=2 * grid.out_height)
    _check_chip_edge(scene, grid)
    _check_chip_count(scene, grid, settings.max_chips)
    with network_guard(network_ok):
        scale = scene_scale_range(
            scene, selection.indexes, settings.percentiles, manual=settings.scale_range, nodata=settings.nodata
        )
    read = ReadSpec(
        scene.path, grid, selection.indexes, scale, settings.nodata, settings.min_valid, allow_network=network_ok
    )
    return scene, grid, read, selection.description


def _check_chip_edge(scene: SceneInfo, grid: ChipGrid) -> None:
    edge = max(grid.chip_width, grid.chip_height, grid.out_width, grid.out_height)
    if edge > MAX_CHIP_EDGE:
        raise InputError(
            f"chips of {grid.chip_width} x {grid.chip_height} scene px (resampled to {grid.out_width} x "
            f"{grid.out_height}) are larger than {MAX_CHIP_EDGE:,} px; the model sees each chip at its own input "
            "size (224 px for most CLIPs), so pass a smaller --chip-size (or a coarser --gsd)"
        )


def _check_upsampling(scene: SceneInfo, grid: ChipGrid, model: str, chosen_by_user: bool) -> None:
    """Refuse (model default GSD) or warn (--gsd given) when chips are enlarged many times."""
    factor = max(grid.out_width / grid.chip_width, grid.out_height / grid.chip_height)
    if factor <= MAX_DEFAULT_UPSAMPLING:
        return
    what = (
        f"chips of scene {scene.name} would be upsampled {factor:.3g}x ({grid.chip_width} scene px to "
        f"{grid.out_width} px, {len(grid):,} chips)"
    )
    if chosen_by_user:
        warn(f"{what} to the --gsd you gave; the model sees no detail the scene does not have")
        return
    raise InputError(
        f"{what} to the native resolution model {model} declares; --gsd sets the ground resolution chips are "
        "resampled to: pass --gsd scene to classify at the scene's own resolution, or --gsd METRES to "
        "choose (and accept) the upsampling"
    )


def _check_chip_count(scene: SceneInfo, grid: ChipGrid, max_chips: int) -> None:
    if len(grid) > max_chips:
        raise InputError(
            f"scene {scene.name} ({scene.width:,} x {scene.height:,} px) makes {len(grid):,} chips "
            f"({grid.n_rows:,} x {grid.n_cols:,}), more than --max-chips {max_chips:,}; check --chip-size and "
            "--gsd, or raise --max-chips to run it anyway"
        )


def work_estimate(plan: ScenePlan) -> str:
    """One line on the work a plan implies, printed before a run starts."""
    grid = plan.grid
    read_pixels = len(grid) * grid.chip_width * grid.chip_height
    tta, views = plan.classifier.tta, plan.classifier.views
    model_pixels = len(grid) * grid.out_width * grid.out_height * tta * views // (4 if views > 1 else 1)
    return (
        f"{len(grid):,} chips ({grid.n_rows:,} x {grid.n_cols:,}) in {plan.n_batches:,} batches: "
        f"{read_pixels / 1e6:,.1f} Mpx read, {model_pixels / 1e6:,.1f} Mpx to the model"
        + (f" ({tta} turned/mirrored views per chip, --tta)" if tta > 1 else "")
        + (f" (the chip and {views - 1} detail views of it, --views)" if views > 1 else "")
    )


def plan_map(settings: MapSettings) -> ScenePlan:
    """Validate settings against the scene, model and head, and plan the batches.

    Raises:
        InputError: for any bad input (see the messages).
    """
    from geobimors.heads.checkpoint import checkpoint_labels, read_metadata, warn_if_tta_differs

    check_at_least_one(settings.batch_size, "--batch-size")
    if settings.batch_size > MAX_BATCH_SIZE or settings.caption_batch_size > MAX_BATCH_SIZE:
        size = max(settings.batch_size, settings.caption_batch_size)
        raise InputError(
            f"batch size {size:,} is more than {MAX_BATCH_SIZE:,} chips: a batch's pixels alone would take "
            "gigabytes; use --batch-size 32 to 512"
        )
    check_at_least_one(settings.top_k, "--top-k")
    check_views(settings.views, settings.view_blend)
    metadata = read_metadata(settings.head) if settings.head else None
    model = settings.model or (str(metadata["clip_model"]) if metadata else DEFAULT_MODEL)
    labels = settings.labels or (tuple(checkpoint_labels(metadata)) if metadata else ())
    if len(labels) < 2:
        raise InputError("classification needs at least two labels; pass --labels FILE")
    if settings.literal_labels and settings.head:
        raise InputError(LITERAL_WITH_HEAD)
    scene, grid, read, bands = plan_reading(settings, model)
    head = str(Path(settings.head).absolute()) if settings.head else None
    classifier = ClassifierSpec(
        model,
        tuple(labels),
        settings.device,
        settings.precision,
        head=head,
        tta=check_tta(settings.tta),
        views=settings.views,
        view_blend=DEFAULT_VIEW_BLEND if settings.view_blend is None else settings.view_blend,
        literal_labels=settings.literal_labels,
    )
    plan = ScenePlan(settings, scene, grid, read, classifier, bands)
    check_at_least_one(settings.caption_batch_size, "--caption-batch-size")
    if metadata:
        plan.head_kind = str(metadata["head"])
        warn_if_tta_differs(metadata, plan.classifier.tta)
        captioner = metadata["config"].get("captioner")
        if metadata["head"] == "bimors" and captioner and captioner.get("name", "none") != "none":
            plan.captioner = CaptionerSpec(**captioner)
    if settings.views > 1 and metadata and metadata["head"] == "bimors":
        raise InputError(
            "--views blends pooled image features, which the bimors head does not classify from (it reads visual "
            "tokens); drop --views (zero-shot, coop, cocoop, probe and tip heads take it)"
        )
    if settings.views > 1 and (plan.captioner is not None or settings.captioner is not None):
        what = "the BiMoRS head reads" if plan.captioner is not None else "--captions writes"
        raise InputError(
            f"--views blends pooled image features, and {what} captions from one view of each chip; "
            "drop --views (or map captions in another run)"
        )
    if settings.captioner is not None:
        if plan.captioner is not None and plan.captioner.name != settings.captioner.name:
            raise InputError(
                f"the head reads captions by {plan.captioner.name}, and those fill the caption column: drop "
                f"--captions, or pass --captions {plan.captioner.name}"
            )
        plan.captioner = plan.captioner or settings.captioner
        if _shares_image_pass(plan):
            plan.classifier = replace(plan.classifier, captioner=plan.captioner)
    return plan


def _shares_image_pass(plan: ScenePlan) -> bool:
    """True when the classifier can caption each chip from its own image pass (no captioning stage).

    The bundled captioner reads the bundled image tower's features; a map with the bundled model
    computes them anyway, so its captions cost the decoder alone. A head that reads captions
    (BiMoRS) needs them before it classifies, so it keeps the captioning stage.
    """
    from geobimors.models.captions import MINI_CAPTIONER

    source = resolve_model_name(plan.classifier.model)
    return (
        plan.captioner is not None
        and plan.captioner.name == MINI_CAPTIONER
        and source.kind == "bundled"
        and source.arch == "mini"
        and plan.head_kind != "bimors"
    )


def check_output_safety(output: str | Path, settings: MapSettings) -> None:
    """Refuse outputs that would destroy an input or cannot be written next to their sidecar files.

    Raises:
        OutputError: the output is the scene, labels or head file (also through a
            link), its name is too long for the sidecar files, or its sidecar
            store is a symbolic link.
    """
    import os

    from geobimors.errors import OutputError

    out = Path(output).expanduser()
    if len(os.fsencode(out.name)) > 255 - len(".partial") - 16:
        raise OutputError(f"output file name {out.name[:40]}... is too long ({len(out.name)} characters); shorten it")
    if out.exists():
        for what, given in (("scene", settings.scene), ("head checkpoint", settings.head)):
            if given and Path(given).exists() and os.path.samefile(out, given):
                raise OutputError(f"output {out} is the input {what}; choose another -o path")
    sidecar = out.with_name(out.name + ".partial")
    if sidecar.is_symlink():
        raise OutputError(f"{sidecar} is a symbolic link; remove it (geobimors keeps unfinished runs there)")


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (a retrained head changes the run's fingerprint)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]
