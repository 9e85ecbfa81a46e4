"""The ``geobimors`` command line: a thin layer over the core API.

Errors a user can fix are printed as one line (``Error: ...``) with exit code 2
(bad input) or 1 (runtime failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from geobimors._version import __version__
from geobimors.errors import GeobimorsError, GeobimorsWarning, InputError, check_at_least_one

F = TypeVar("F", bound=Callable[..., Any])


class FiniteFloat(click.ParamType):
    """A float option that refuses nan and inf (click's FLOAT accepts them, and they poison every score)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """The option's value as a finite float (click's usage error otherwise)."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    if issubclass(category, GeobimorsWarning):
        click.echo(f"Warning: {message}", err=True)


def _setup_messages(debug: bool) -> None:
    """One-line warnings of our own; third-party chatter only with --debug."""
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    warnings.showwarning = _show_warning
    warnings.simplefilter("default", GeobimorsWarning)
    # Libraries log their failures (open_clip: "Failed to download weights ..." on the root logger;
    # huggingface_hub: each failed request) before raising what geobimors turns into one line.
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger().setLevel(logging.CRITICAL)
    for name in ("open_clip", "transformers", "huggingface_hub", "rasterio", "distributed"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # huggingface_hub sets its own level when imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply option decorators in the order they are listed (as they appear in --help)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


common_options = _options(
    click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary."),
    click.option("--debug", is_flag=True, help="Show tracebacks and library logs on errors."),
)

device_options = _options(
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="bf16 autocast works on CPU and GPU (faster only where the hardware has bf16: recent GPUs, "
        "CPUs with AVX512-BF16 or AMX); fp16 needs CUDA.",
    ),
)

literal_labels_option = click.option(
    "--literal-labels",
    is_flag=True,
    help="Zero-shot: read every label exactly as written. By default the bundled model reads a label that is none "
    "of its trained phrasings ('woodland', 'built area') through its nearest trained classes (label anchoring).",
)
tta_option = click.option(
    "--tta",
    type=click.Choice(["1", "2", "4", "8"]),
    callback=lambda ctx, param, value: int(value),
    default="1",
    show_default=True,
    help="Test-time augmentation: average each chip's image features over 2 (+ mirror image), 4 (the four "
    "90-degree turns) or 8 (turns and mirror) views; N views take N image passes.",
)

MODEL_HELP = (
    "CLIP model: mini (bundled, offline), ARCH:TAG (ViT-B-16:openai), ARCH:/path/weights, "
    "ARCH:hf-hub:ORG/REPO/FILE, hf-hub:ORG/REPO, or a local-dir: model folder."
)

chip_options = _options(
    click.option(
        "--chip-size",
        default=None,
        help="Chip edge in pixels (224) or ground units (640m, 1.5km).  [default: the model's, else 224]",
    ),
    click.option(
        "--overlap", default="0", show_default=True, help="Overlap between neighbouring chips, in --chip-size units."
    ),
    click.option(
        "--gsd",
        default=None,
        help="Resample chips to this ground resolution in m/px; 'scene' keeps the scene's.  "
        "[default: the scene's resolution moved into the range the model was trained on (mini: 0.6-30 m, "
        "read no finer than 1.2 m), or the model's native resolution, else 'scene']",
    ),
    click.option("--bands", default=None, help="1-based bands for R,G,B (e.g. 3,2,1), or one band for grey."),
    click.option(
        "--scale-range",
        default=None,
        help="Map MIN,MAX (or RMIN,RMAX,GMIN,GMAX,BMIN,BMAX) to 0..255 instead of scene percentiles.",
    ),
    click.option(
        "--percentiles",
        default="2,98",
        show_default=True,
        help="Scene percentiles mapped to 0..255 for 16-bit and float imagery.",
    ),
    click.option("--nodata", type=float, default=None, help="Nodata value, overriding the scene's masks."),
    click.option(
        "--min-valid",
        type=FINITE,
        default=0.5,
        show_default=True,
        help="Skip chips with a smaller fraction of valid (not nodata) pixels.",
    ),
    click.option("--allow-no-crs", is_flag=True, help="Map scenes without a CRS in pixel coordinates."),
)

safety_options = _options(
    click.option(
        "--allow-network",
        is_flag=True,
        help="Let a local scene file (a VRT, a WMS description, ...) read sources over the network. "
        "Without it a local file never makes geobimors contact a host; a URL you give as SCENE always may.",
    ),
    click.option(
        "--max-chips",
        type=int,
        default=2_000_000,
        show_default=True,
        help="Refuse scenes that make more chips than this (usually a wrong --chip-size or --gsd).",
    ),
    click.option(
        "--allow-no-geotransform",
        is_flag=True,
        help="Map a scene that has a CRS but no geotransform in pixel coordinates instead of refusing it.",
    ),
)


def _safety_settings(options: dict[str, Any]) -> dict[str, Any]:
    """MapSettings fields from the safety options."""
    return {
        "allow_network": options["allow_network"],
        "max_chips": options["max_chips"],
        "allow_no_geotransform": options["allow_no_geotransform"],
    }


dask_options = _options(
    click.option(
        "--scheduler",
        default=None,
        envvar="DASK_SCHEDULER_ADDRESS",
        help="Run on an existing Dask cluster (tcp://HOST:PORT; also DASK_SCHEDULER_ADDRESS).",
    ),
    click.option(
        "--workers",
        type=int,
        default=None,
        help="Start a local Dask cluster of N worker processes.  [default: in-process]",
    ),
)

scenes_options = _options(
    click.option(
        "--asset",
        default=None,
        help="STAC asset to map in each item.  [default: the asset with red, green and blue bands, else 'visual']",
    ),
    click.option("--fail-fast", is_flag=True, help="Several scenes: stop at the first that fails (default: go on)."),
)

run_options = _options(
    click.option("--overwrite", is_flag=True, help="Replace the output if it exists."),
    click.option("--restart", is_flag=True, help="Discard an unfinished earlier run instead of resuming it."),
    click.option(
        "--progress",
        "progress_mode",
        type=click.Choice(["bar", "jsonl", "none"]),
        default="bar",
        show_default=True,
        help="Progress on stderr: a bar, JSON lines for programs, or none.",
    ),
)

generation_options = _options(
    click.option("--max-new-tokens", type=int, default=16, show_default=True, help="Caption length limit."),
    click.option("--num-beams", type=int, default=4, show_default=True, help="Beam search width for captions."),
)

captioner_options = _options(
    click.option(
        "--captioner",
        default=None,
        help="BLIP-2 or BLIP checkpoint (Hugging Face id or folder), 'mini' (bundled, offline) or 'none' (no "
        "captions; a learned empty-caption embedding).  [default: Salesforce/blip-image-captioning-base when "
        "downloaded, else mini; the paper uses Salesforce/blip2-flan-t5-xl]",
    ),
    generation_options,
)


chip_size_option = click.option(
    "--chip-size",
    default=None,
    help="Polygons/points: chip edge in pixels or ground units, as in `map`.  [default: the model's, else 224]",
)

folder_labels_option = click.option(
    "-l",
    "--labels",
    "labels_path",
    type=click.Path(path_type=Path),
    default=None,
    help="'FolderName: prompt text' lines (else readable folder names: denseresidential -> dense residential area).",
)


def _split_numbers(text: str | None, option: str, kind: type = float) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. 3,2,1") from None


def _parse_gsd(text: str | None) -> float | None:
    if text is None or text.strip().lower() == "scene":
        return None
    try:
        value = float(text.strip().removesuffix("m"))
    except ValueError:
        raise InputError(f"--gsd {text!r}: give metres per pixel (e.g. 10) or 'scene'") from None
    if not value > 0:
        raise InputError(f"--gsd must be positive, got {text!r}")
    return value


def _chip_settings(options: dict[str, Any]) -> dict[str, Any]:
    """MapSettings fields from the chip options."""
    pct = _split_numbers(options["percentiles"], "--percentiles")
    if pct is None or len(pct) != 2:
        raise InputError(f"--percentiles {options['percentiles']!r}: expected LOW,HIGH such as 2,98")
    gsd = options["gsd"]
    return {
        "chip_size": options["chip_size"],
        "overlap": options["overlap"],
        "gsd": _parse_gsd(gsd),
        "keep_scene_gsd": gsd is not None and gsd.strip().lower() == "scene",
        "bands": _split_numbers(options["bands"], "--bands", int),
        "scale_range": options["scale_range"],
        "percentiles": (pct[0], pct[1]),
        "nodata": options["nodata"],
        "min_valid": options["min_valid"],
        "allow_no_crs": options["allow_no_crs"],
    }


def _captioner_spec(name: str | None, max_new_tokens: int, num_beams: int) -> Any:
    from geobimors.models.captions import CaptionerSpec, default_captioner

    if max_new_tokens < 1 or num_beams < 1:
        raise InputError("--max-new-tokens and --num-beams must be at least 1")
    if name is None:
        name, note = default_captioner()
        if note is not None:
            click.echo(note, err=True)
    return CaptionerSpec(name, max_new_tokens, num_beams)


def _output_captioner(name: str | None, max_new_tokens: int, num_beams: int) -> Any:
    """The captioner of ``--captions`` (map, embed): ``none`` would write no captions, so it is refused up front."""
    spec = _captioner_spec(None if name == "auto" else name, max_new_tokens, num_beams)
    if spec.is_none:
        raise InputError("--captions none writes no captions; drop --captions, or name a captioner (mini, a BLIP id)")
    return spec


def _check_report_output(path: Path | None, overwrite: bool, option: str, suffix: str) -> None:
    """Fail on an output path (--json, --confusion, -o) before any slow work."""
    from geobimors.files import check_output_file

    if path is not None:
        check_output_file(path, overwrite, suffix, f"{option} path")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="geobimors")
def cli() -> None:
    """Map what is on the ground in satellite and aerial scenes with vision-language models.

    \b
    Examples:
      geobimors map scene.tif --labels labels.txt
      geobimors map scene.tif -l labels.txt --model ViT-B-16:openai --chip-size 640m -o out.gpkg
      geobimors train eurosat/ --head bimors --shots 16 -o head.safetensors
      geobimors map scene.tif --head head.safetensors -o out.gpkg
    """


@cli.command("map")
@click.argument("scenes", nargs=-1, metavar="[SCENE]...")
@click.option(
    "-l",
    "--labels",
    "labels_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Labels file: one label per line, '#' comments, optional 'label: prompt text'. "
    "Required unless --head supplies its training classes.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output GeoPackage (required with several scenes).  [default: SCENE_NAME.geobimors.gpkg in the current "
    "directory]",
)
@click.option("-m", "--model", default=None, help=MODEL_HELP + "  [default: the --head's model, else mini]")
@click.option(
    "--head",
    "head_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Trained head checkpoint (geobimors train); its captioner captions the chips (cached).",
)
@chip_options
@safety_options
@click.option("--batch-size", type=int, default=32, show_default=True, help="Chips per classification task.")
@click.option(
    "--caption-batch-size",
    type=int,
    default=16,
    show_default=True,
    help="Chips per captioning task (heads with a captioner, --captions).",
)
@click.option(
    "--captions",
    "captions",
    is_flag=False,
    flag_value="auto",
    default=None,
    help="Also caption every classified chip into a 'caption' column, whatever the head. CAPTIONER: mini "
    "(bundled, offline), or a BLIP-2 or BLIP id or folder; bare --captions: Salesforce/blip-image-captioning-base "
    "when downloaded, else mini. Captions are cached and resume with the run; mini captions a map of the "
    "bundled model from the same image pass.",
)
@generation_options
@click.option("--top-k", type=int, default=3, show_default=True, help="Best labels kept per chip.")
@tta_option
@click.option(
    "--views",
    type=int,
    default=1,
    show_default=True,
    help="Detail views: 5 or 6 read each chip at twice the pixels and classify its features blended with those "
    "of its four quadrants (and centre crop), each seen at twice the detail; about 6x the work per chip. Helps "
    "where the scene is finer than the chips (aerial photos); not with captions or a BiMoRS head.",
)
@click.option(
    "--view-blend",
    type=FINITE,
    default=None,
    help="With --views 5/6: the sub-views' weight B, features = (1-B) x chip + B x mean of sub-views [default: 0.5].",
)
@literal_labels_option
@device_options
@dask_options
@click.option("--regions", is_flag=True, help="Also write a 'regions' layer of adjacent same-label chips merged.")
@click.option(
    "--embeddings",
    "embeddings_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the chips' embeddings store (GeoParquet) from the same image pass, for re-labelling "
    "and search without pixels.",
)
@click.option(
    "--embeddings-dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Number type of the --embeddings store.",
)
@click.option(
    "--from-embeddings",
    "from_embeddings",
    type=click.Path(path_type=Path),
    default=None,
    help="Label the chips of an embeddings store (geobimors embed) instead of a scene: no pixels are read. "
    "Give no SCENE and no chip options.",
)
@scenes_options
@click.option(
    "--crs",
    default=None,
    help="Several scenes: CRS of the output (EPSG:3035, WKT, PROJ).  [default: the scenes' common CRS, else EPSG:4326]",
)
@click.option(
    "--keep-overlaps",
    is_flag=True,
    help="Several scenes: keep every chip where scenes overlap (default: each place once, the chip with the "
    "most valid pixels wins).",
)
@run_options
@common_options
def map_command(
    scenes: tuple[str, ...],
    labels_path: Path | None,
    output: Path | None,
    model: str | None,
    head_path: Path | None,
    batch_size: int,
    caption_batch_size: int,
    captions: str | None,
    max_new_tokens: int,
    num_beams: int,
    top_k: int,
    tta: int,
    views: int,
    view_blend: float | None,
    literal_labels: bool,
    device: str,
    precision: str,
    scheduler: str | None,
    workers: int | None,
    regions: bool,
    embeddings_path: Path | None,
    embeddings_dtype: str,
    from_embeddings: Path | None,
    asset: str | None,
    fail_fast: bool,
    crs: str | None,
    keep_overlaps: bool,
    overwrite: bool,
    restart: bool,
    progress_mode: str,
    quiet: bool,
    debug: bool,
    **chip: Any,
) -> None:
    """Classify every chip of SCENE and write labeled polygons to a GeoPackage.

    SCENE is any raster GDAL reads: GeoTIFF, COG, VRT, or a URL (https://, /vsicurl/).
    Several scenes (paths, folders, quoted globs, @list.txt, local STAC files) make
    one map: one chips layer with scene, datetime and source_crs columns, each place
    mapped once where scenes overlap (--keep-overlaps keeps all); a scene that fails
    is listed in the 'failed_scenes' table while the others are mapped (exit code 1).
    An interrupted run resumes when the same command runs again. With --scheduler
    or --workers the chips are processed on a Dask cluster; every worker reads its
    own windows. With --device cuda, tasks ask for a GPU worker resource
    (`dask worker ... --resources GPU=1`, or dask-cuda's LocalCUDACluster).
    Exit code 1 when some windows could not be read (they are in the 'failed' layer).

    \b
    Many scenes, one map:
      geobimors map tiles/ "more/*.tif" @list.txt -l labels.txt -o region.gpkg
      geobimors map items.json --asset visual -l labels.txt -o region.gpkg --crs EPSG:3035

    \b
    Embeddings (no second image pass, no pixels read when re-labelling):
      geobimors map scene.tif -l labels.txt --embeddings scene.parquet
      geobimors map --from-embeddings scene.parquet -l other-labels.txt -o other.gpkg
    """
    from geobimors.run.plan import MapSettings, check_output_safety, plan_map, work_estimate
    from geobimors.vector.gpkg import check_output

    if from_embeddings is not None:
        _refuse_pixel_options(click.get_current_context(), " ".join(scenes) or None, embeddings_path)
        _map_from_embeddings(
            from_embeddings, labels_path, output, model, head_path, top_k, device, precision, regions, overwrite,
            progress_mode, quiet, literal_labels,
        )  # fmt: skip
        return
    if not scenes:
        raise InputError("missing SCENE (a raster to map), or --from-embeddings STORE to label stored embeddings")
    sources = _scene_sources(scenes, asset, chip["allow_network"])
    captioner = None
    if captions is not None:
        captioner = _output_captioner(captions, max_new_tokens, num_beams)
    # Several scenes, a target CRS or a dated scene (a STAC item: its datetime goes in a column) make the
    # many-scene output; one plain scene keeps the single-scene output.
    if sources is not None and (len(sources) > 1 or crs is not None or sources[0].datetime is not None):
        _map_scenes(sources, output, labels_path, model, head_path, batch_size, caption_batch_size, captioner, top_k,
                    device, precision, scheduler, workers, regions, embeddings_path, fail_fast, crs, keep_overlaps,
                    overwrite, restart, progress_mode, quiet,
                    {**chip, "tta": tta, "views": views, "view_blend": view_blend,
                     "literal_labels": literal_labels})  # fmt: skip
        return
    scene = sources[0].path if sources is not None else scenes[0]
    out = output if output is not None else Path(_default_output(scene))
    check_output(out, overwrite)  # fail on the output before any slow work
    embeddings = None
    if embeddings_path is not None:
        from geobimors.embeddings.embed import EmbeddingsRequest
        from geobimors.embeddings.store import check_store_output

        if views != 1:
            raise InputError("--embeddings stores one view's features per chip; drop --views (or --embeddings)")
        embeddings = EmbeddingsRequest(check_store_output(embeddings_path, overwrite), embeddings_dtype)
    labels = _map_labels(labels_path, head_path)
    _check_workers(workers)
    settings = MapSettings(
        scene=scene,
        labels=tuple(labels),
        model=model,
        batch_size=batch_size,
        caption_batch_size=caption_batch_size,
        captioner=captioner,
        top_k=top_k,
        device=device,
        precision=precision,
        head=str(head_path) if head_path is not None else None,
        tta=tta,
        views=views,
        view_blend=view_blend,
        literal_labels=literal_labels,
        **_chip_settings(chip),
        **_safety_settings(chip),
    )
    plan = plan_map(settings)
    check_output_safety(out, settings)
    if not quiet and progress_mode != "jsonl":
        click.echo(f"Work: {work_estimate(plan)}", err=True)
    progress = "none" if quiet else progress_mode
    run: dict[str, Any] = {"overwrite": overwrite, "regions": regions, "restart": restart, "embeddings": embeddings}
    summary = _run_map(plan, out, scheduler, workers, progress, quiet, **run)
    _report_map(summary, show_summary=not quiet and progress_mode != "jsonl")


def _check_workers(workers: int | None) -> None:
    check_at_least_one(workers, "--workers")
    if workers is not None and workers > max(64, 4 * (os.cpu_count() or 1)):
        raise InputError(
            f"--workers {workers} is far more than this machine's {os.cpu_count()} CPUs; use at most the number "
            "of CPUs (or --scheduler for a cluster)"
        )


def _scene_sources(scenes: tuple[str, ...], asset: str | None, allow_network: bool) -> list[Any] | None:
    """The scenes named by the arguments; ``None`` for one plain file or URL (the single-scene run as ever)."""
    from geobimors.raster.sources import resolve_scenes

    if len(scenes) == 1 and asset is None:
        text = scenes[0]
        path = Path(text).expanduser()
        listed = text.startswith("@") or path.is_dir() or (not path.exists() and any(c in text for c in "*?["))
        if not listed and path.suffix.lower() not in (".json", ".geojson"):
            return None
    if asset is not None and not any(Path(s).suffix.lower() in (".json", ".geojson") for s in scenes):
        raise InputError("--asset picks an asset of STAC items; give a STAC file (.json) as SCENE, or drop --asset")
    return resolve_scenes(scenes, asset=asset, allow_network=allow_network, missing_ok=len(scenes) > 1)


def _map_scenes(
    sources: list[Any],
    output: Path | None,
    labels_path: Path | None,
    model: str | None,
    head_path: Path | None,
    batch_size: int,
    caption_batch_size: int,
    captioner: Any,
    top_k: int,
    device: str,
    precision: str,
    scheduler: str | None,
    workers: int | None,
    regions: bool,
    embeddings_path: Path | None,
    fail_fast: bool,
    crs: str | None,
    keep_overlaps: bool,
    overwrite: bool,
    restart: bool,
    progress_mode: str,
    quiet: bool,
    chip: dict[str, Any],
) -> None:
    """``geobimors map`` of several scenes into one GeoPackage."""
    from geobimors.raster.sources import check_output_not_input
    from geobimors.run.multi import describe_work, map_scenes_to_file, parse_crs, plan_scenes
    from geobimors.run.plan import MapSettings
    from geobimors.vector.gpkg import check_output

    if output is None and len(sources) > 1:
        raise InputError(f"{len(sources)} scenes make one map: name it with -o OUTPUT.gpkg")
    output = output if output is not None else Path(_default_output(sources[0].path))
    check_output(output, overwrite)
    check_output_not_input(output, sources)
    parse_crs(crs)
    if embeddings_path is not None:
        raise InputError(
            "--embeddings takes one scene; for several, run `geobimors embed SCENES -o DIR/` (one store per scene)"
        )
    labels = _map_labels(labels_path, head_path)
    _check_workers(workers)
    settings = MapSettings(
        scene=sources[0].path,
        labels=tuple(labels),
        model=model,
        batch_size=batch_size,
        caption_batch_size=caption_batch_size,
        captioner=captioner,
        top_k=top_k,
        device=device,
        precision=precision,
        head=str(head_path) if head_path is not None else None,
        tta=chip["tta"],
        views=chip["views"],
        view_blend=chip["view_blend"],
        literal_labels=chip["literal_labels"],
        **_chip_settings(chip),
        **_safety_settings(chip),
    )
    multi = plan_scenes(sources, settings, crs, fail_fast)
    talk = not quiet and progress_mode != "jsonl"
    if talk:
        click.echo(f"Work: {describe_work(multi)}", err=True)
    if multi.crs_note and not quiet:
        click.echo(f"Note: {multi.crs_note}", err=True)
    run = {"overwrite": overwrite, "regions": regions, "restart": restart, "keep_overlaps": keep_overlaps}
    summary = _run_map(multi, output, scheduler, workers, "none" if quiet else progress_mode, quiet,
                       fail_fast=fail_fast, runner=map_scenes_to_file, **run)  # fmt: skip
    _report_scenes(summary, show_summary=talk)


def _report_scenes(summary: Any, show_summary: bool) -> None:
    """Print a multi-scene summary; exit 1 when a scene failed or some windows could not be read."""
    if show_summary:
        for line in summary.lines():
            click.echo(line)
    failed = summary.failed_scenes
    if failed:
        first = failed[0]
        click.echo(
            f"Warning: {len(failed)} of {len(summary.runs)} scenes failed "
            f"(first: {first.source.name}: {first.reason}); "
            "the output has the others and lists the failed ones in its 'failed_scenes' table; fix or drop them and "
            "re-run the same command with --overwrite: finished scenes are kept and not mapped again",
            err=True,
        )
    if summary.n_failed:
        click.echo(
            f"Warning: {summary.n_failed} chips could not be read (first in {summary.total.first_failure}); the "
            "output has every other chip and lists them in its 'failed' layer",
            err=True,
        )
    if failed or summary.n_failed:
        sys.exit(1)


def _map_labels(labels_path: Path | None, head_path: Path | None) -> list[Any]:
    """The labels of ``--labels``, or none when a ``--head`` brings its training classes."""
    from geobimors.labels import read_labels

    if labels_path is None and head_path is None:
        raise InputError("missing --labels FILE (one label per line), or a --head whose training classes to use")
    return read_labels(labels_path) if labels_path is not None else []


def _run_map(
    plan: Any,
    out: Path,
    scheduler: str | None,
    workers: int | None,
    progress_mode: str,
    quiet: bool,
    runner: Callable[..., Any] | None = None,
    **options: Any,
) -> Any:
    """Run a plan (or several scenes' plans) on the executor the options ask for into ``out``."""
    from geobimors.run.execute import DistributedExecutor, make_executor
    from geobimors.run.pipeline import map_to_file

    def announce(executor: object) -> None:
        if quiet or not isinstance(executor, DistributedExecutor):
            return
        link = executor.dashboard_link
        click.echo(f"Dask: {executor.description}" + (f", dashboard {link}" if link else ""), err=True)

    device = plan.first.settings.device if hasattr(plan, "first") else plan.settings.device
    executor = make_executor(scheduler, workers, gpu=device == "cuda")
    try:
        run = runner or map_to_file
        return run(plan, out, progress_mode=progress_mode, executor=executor, on_start=announce, **options)
    finally:
        executor.close()


def _report_map(summary: Any, show_summary: bool) -> None:
    """Print the run summary and its warnings; exit 1 when some windows could not be read."""
    if show_summary:
        for line in summary.lines():
            click.echo(line)
    if summary.n_classified == 0 and not summary.n_failed:
        click.echo(
            "Warning: no chip had enough valid pixels, so the chips layer is empty; check the scene's nodata "
            "(--nodata) and --min-valid",
            err=True,
        )
    if summary.n_failed:
        click.echo(
            f"Warning: {summary.n_failed} chips could not be read (first at {summary.first_failure}); the output "
            "has every other chip and lists them in its 'failed' layer",
            err=True,
        )
        sys.exit(1)


@cli.command("caption")
@click.argument("source", type=click.Path(path_type=Path))
@captioner_options
@click.option("-m", "--model", default="mini", show_default=True, help="Model whose chip size and GSD to use (scenes).")
@chip_options
@safety_options
@click.option("--batch-size", type=int, default=16, show_default=True, help="Chips per captioning call.")
@device_options
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write captions to a CSV.")
@click.option("--overwrite", is_flag=True, help="Replace the CSV if it exists.")
@common_options
def caption_command(
    source: Path,
    captioner: str | None,
    max_new_tokens: int,
    num_beams: int,
    model: str,
    batch_size: int,
    device: str,
    precision: str,
    output: Path | None,
    overwrite: bool,
    quiet: bool,
    debug: bool,
    **chip: Any,
) -> None:
    """Caption the images of a folder, or the chips of a scene, into the caption cache.

    SOURCE is a folder of images (class sub-folders are searched too) or a raster;
    raster chips are cut exactly as `geobimors map` cuts them with the same options,
    so a later map or train run finds their captions in the cache.
    """
    from geobimors.models.captions import load_captioner
    from geobimors.run.caption import caption_source

    spec = _captioner_spec(captioner, max_new_tokens, num_beams)
    if spec.is_none:
        raise InputError("--captioner none generates no captions; name a BLIP-2 or BLIP checkpoint")
    check_at_least_one(batch_size, "--batch-size")
    _check_report_output(output, overwrite, "-o", ".csv")
    rows, cached = caption_source(
        source,
        load_captioner(spec, device, precision),
        model,
        {**_chip_settings(chip), **_safety_settings(chip)},
        batch_size,
        progress_mode="none" if quiet else "bar",
    )
    if output is not None:
        import csv

        tmp = output.with_name(output.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "caption"])
            writer.writerows(rows)
        tmp.replace(output)
    if not quiet:
        click.echo(f"captions: {len(rows)} ({cached} already cached), captioner {spec.name}")
        if output is not None:
            click.echo(f"output: {output}")


@cli.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Head checkpoint to write.")
@click.option("-m", "--model", default="mini", show_default=True, help=MODEL_HELP)
@click.option(
    "--head",
    "head_kind",
    type=click.Choice(["probe", "tip", "bimors", "coop", "cocoop"]),
    default="tip",
    show_default=True,
    help="tip: Tip-Adapter cache added to the zero-shot logits; probe: linear probe anchored to the zero-shot "
    "classifier (both fit on frozen image embeddings in about a second); bimors/coop/cocoop: prompt learners "
    "(epochs of backpropagation through the text tower). The default had the best mean top-1 over the few-shot "
    "table of docs/benchmarks.md and never fell more than a point below zero-shot there.",
)
@click.option(
    "--shots",
    type=int,
    default=None,
    help="Training images per class.  [default: 16 for image folders; every covered chip for polygons/points]",
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=FINITE, default=0.009, show_default=True, help="Peak SGD learning rate (cosine schedule).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of shot sampling and training.")
@click.option("--n-ctx", type=int, default=4, show_default=True, help="Number of learned context vectors.")
@click.option("--ctx-init", default="a photo of a", show_default=True, help="Words initialising the context.")
@captioner_options
@click.option(
    "--caption-encoder",
    default="minilm",
    show_default=True,
    help="BERT-style caption encoder: minilm (bundled, offline) or a Hugging Face id (bert-base-uncased).",
)
@folder_labels_option
@click.option(
    "--classes",
    type=click.Choice(["all", "base", "new"]),
    default="all",
    show_default=True,
    help="Train on all classes, or the base/new half (base-to-new protocol).",
)
@click.option(
    "--val-shots", type=int, default=16, show_default=True, help="Validation images per class (best-epoch selection)."
)
@click.option("--scene", default=None, help="Raster under the polygons or points, when DATA is a vector file.")
@click.option("--label-column", default="label", show_default=True, help="Class attribute of the polygons or points.")
@click.option(
    "--min-purity",
    type=FINITE,
    default=0.75,
    show_default=True,
    help="Polygons/points: a map-grid chip trains as class K when K covers at least this fraction of it.",
)
@chip_size_option
@click.option(
    "--allow-network",
    is_flag=True,
    help="Let a local --scene file (a VRT, ...) read sources over the network (see geobimors map --help).",
)
@tta_option
@device_options
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@common_options
def train_command(
    data: Path,
    output: Path,
    model: str,
    head_kind: str,
    shots: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    n_ctx: int,
    ctx_init: str,
    captioner: str | None,
    max_new_tokens: int,
    num_beams: int,
    caption_encoder: str,
    labels_path: Path | None,
    classes: str,
    val_shots: int,
    scene: str | None,
    label_column: str,
    min_purity: float,
    chip_size: str | None,
    allow_network: bool,
    tta: int,
    device: str,
    precision: str,
    overwrite: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Train a head few-shot on a frozen CLIP and save it.

    DATA is an ImageFolder tree (one folder of images per class), a folder with
    train/ (and val/) trees, or a vector file of labelled polygons or points (with
    --scene): every chip of the map grid they cover (to --min-purity) is an example.
    Prompt learners keep their best epoch on the validation images; probe and tip
    choose their regularisation on them (or by cross-validation on the shots).
    """
    from geobimors.train.api import train
    from geobimors.train.loop import TrainSettings

    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)  # checks the numbers
    _check_report_output(output, overwrite, "-o", ".safetensors")
    spec = _captioner_spec(captioner, max_new_tokens, num_beams) if head_kind == "bimors" else None
    polygon_options = (
        {
            "scene": scene,
            "label_column": label_column,
            "min_purity": min_purity,
            "chip_size": chip_size,
            "allow_network": allow_network,
        }
        if scene
        else {}
    )
    head, result = train(
        data,
        output,
        model=model,
        head=head_kind,
        shots=shots,
        settings=settings,
        captioner=spec.name if spec is not None else "none",
        caption_encoder=caption_encoder,
        n_ctx=n_ctx,
        ctx_init=ctx_init,
        labels_file=labels_path,
        classes=classes,
        val_shots=val_shots,
        tta=tta,
        device=device,
        precision=precision,
        overwrite=overwrite,
        progress="none" if quiet else "bar",
        log=None if quiet else (lambda line: click.echo(line, err=True)),
        **polygon_options,
    )
    if not quiet:
        click.echo(f"head: {head.kind} on {head.clip.name}, {len(head.labels)} classes: {', '.join(head.class_names)}")
        click.echo(f"learnable parameters: {result.trainable_parameters:,}")
        if head_kind in ("probe", "tip"):
            click.echo(f"held-out accuracy of the chosen fit: {result.best_val_accuracy:.4f}, {result.seconds:.1f} s")
        else:
            click.echo(
                f"best epoch: {result.best_epoch} (validation accuracy {result.best_val_accuracy:.4f}), "
                f"{result.seconds:.1f} s"
            )
        click.echo(f"output: {output}")


@cli.command("evaluate")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-m", "--model", default=None, help=MODEL_HELP + "  [default: the --head's model, else mini]")
@click.option("--head", "head_path", type=click.Path(path_type=Path), default=None, help="Trained head checkpoint.")
@click.option("--zero-shot", is_flag=True, help="Evaluate zero-shot CLIP (the default without --head).")
@folder_labels_option
@click.option(
    "--protocol",
    type=click.Choice(["all", "base-to-new"]),
    default="all",
    show_default=True,
    help="All classes together, or base (first half of sorted classes) and new (second half).",
)
@click.option(
    "--task",
    type=click.Choice(["auto", "classification", "retrieval", "captioning"]),
    default="auto",
    show_default=True,
    help="classification (ImageFolder tree); image-text retrieval (a .jsonl caption file or a Karpathy-style "
    "dataset.json: R@1/5/10 both ways and mR); captioning (the same files: BLEU-1..4, ROUGE-L, CIDEr of "
    "--captioner). auto: retrieval for a .json/.jsonl file.",
)
@click.option(
    "--split", default="test", show_default=True, help="Retrieval, captioning: the split of the caption file to use."
)
@click.option(
    "--images",
    "images_root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Retrieval, captioning: folder the caption file's image paths are relative to [default: the file's folder].",
)
@click.option(
    "--captioner",
    default="mini",
    show_default=True,
    help="Captioning: the captioner to score (mini, or a BLIP / BLIP-2 checkpoint). Retrieval with "
    "--caption-guidance: the captioner whose captions guide it.",
)
@click.option(
    "--views",
    type=int,
    default=1,
    show_default=True,
    help="Views of each image: 1 the full image, 5 with its four quadrants, 6 with its centre crop too; each "
    "view is resized to the model input, so a sub-view is seen at twice the detail. Classification blends the "
    "sub-views' mean features with the full image's (--view-blend, default 0.5; zero-shot and embedding heads); "
    "retrieval (MPS-CLIP) scores an image by its best view.",
)
@click.option(
    "--view-blend",
    type=FINITE,
    default=None,
    help="With --views 5/6, the sub-views' weight B in 0..1. Classification: features = (1-B) x full + B x "
    "mean of the sub-views [default: 0.5]. Retrieval: similarity = (1-B) x full + B x best sub-view [default: "
    "the best of all views].",
)
@click.option(
    "--caption-guidance",
    type=FINITE,
    default=None,
    help="Retrieval: keyword guidance weight W in 0..1: caption each image (--captioner) and rank by "
    "(1-W) x image-text + W x caption-text similarity [default: off].",
)
@click.option("--limit-per-class", type=int, default=None, help="Evaluate at most N images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --limit-per-class sampling.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--confusion", type=click.Path(path_type=Path), default=None, help="Write the confusion matrix CSV.")
@click.option("--overwrite", is_flag=True, help="Replace the --json and --confusion files if they exist.")
@tta_option
@literal_labels_option
@device_options
@common_options
def evaluate_command(
    data: Path,
    model: str | None,
    head_path: Path | None,
    zero_shot: bool,
    labels_path: Path | None,
    protocol: str,
    task: str,
    split: str,
    images_root: Path | None,
    captioner: str,
    views: int,
    view_blend: float | None,
    caption_guidance: float | None,
    limit_per_class: int | None,
    seed: int,
    batch_size: int,
    json_path: Path | None,
    confusion: Path | None,
    overwrite: bool,
    tta: int,
    literal_labels: bool,
    device: str,
    precision: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Accuracy of a head or of zero-shot CLIP on an ImageFolder tree, or image-text retrieval on a caption set.

    A head evaluated on another dataset's classes classifies among those classes
    (cross-dataset evaluation): prompt learners generalise to new class names.

    Retrieval (DATA a .jsonl caption file or a dataset.json) follows the protocol of the
    remote-sensing retrieval papers: each test image ranks all test captions (a hit when
    any of its captions is in the top k), each caption ranks all test images.

    \b
    Examples:
      geobimors evaluate ../shared/data/eurosat_rgb --protocol base-to-new
      geobimors evaluate ucm_captions.jsonl --task retrieval --split test
      geobimors evaluate ucm_captions.jsonl --task retrieval --views 5 --caption-guidance 0.3
    """
    from geobimors.train.api import evaluate_data
    from geobimors.train.retrieval import check_retrieval_options, evaluate_retrieval

    if zero_shot and head_path is not None:
        raise InputError("--zero-shot and --head exclude each other")
    check_at_least_one(batch_size, "--batch-size")
    check_at_least_one(limit_per_class, "--limit-per-class")
    _check_report_output(json_path, overwrite, "--json", ".json")
    _check_report_output(confusion, overwrite, "--confusion", ".csv")
    if json_path is not None and confusion is not None and json_path.resolve() == confusion.resolve():
        raise InputError("--json and --confusion name the same file; give two paths")
    retrieval = task == "retrieval" or (task == "auto" and data.suffix.lower() in (".json", ".jsonl"))
    if not retrieval and caption_guidance is not None:
        raise InputError("--caption-guidance applies to --task retrieval only; drop it")
    check_retrieval_options(views, view_blend, caption_guidance, captioner)
    if literal_labels and (head_path is not None or retrieval or task == "captioning"):
        raise InputError("--literal-labels is for zero-shot classification; drop it with --head (a head's text was "
                         "fixed when it was trained), retrieval or captioning")  # fmt: skip
    if task == "captioning":
        if views != 1 or view_blend is not None:
            raise InputError("--views and --view-blend apply to classification and retrieval; drop them with "
                             "--task captioning")  # fmt: skip
        if head_path is not None:
            raise InputError("--task captioning scores a captioner (--captioner); drop --head")
        if tta != 1:
            raise InputError("--tta averages the image features of classification and retrieval; drop it with "
                             "--task captioning")  # fmt: skip
        _evaluate_captioning(data, captioner, split, images_root, device, precision, json_path, quiet)
        return
    if retrieval:
        if head_path is not None:
            raise InputError("--task retrieval evaluates a CLIP model (--model); heads classify, drop --head")
        report = evaluate_retrieval(
            data,
            model or "mini",
            split,
            images_root,
            device,
            precision,
            batch_size,
            views=views,
            view_blend=view_blend,
            caption_guidance=caption_guidance,
            captioner=captioner,
            tta=tta,
        )
        _report_retrieval(report, data, json_path, quiet)
        return
    report = evaluate_data(
        data,
        model=model,
        head=head_path,
        labels_file=labels_path,
        protocol=protocol,
        limit_per_class=limit_per_class,
        seed=seed,
        device=device,
        precision=precision,
        batch_size=batch_size,
        tta=tta,
        views=views,
        view_blend=view_blend,
        literal_labels=literal_labels,
    )
    evaluation = report.pop("_evaluation")
    if json_path is not None:
        _write_json_report(report, json_path)
    if confusion is not None:
        evaluation.write_confusion_csv(confusion)
    if not quiet:
        setting = f"{report['head']}, {report['model']}"
        if views != 1:
            setting += f", full image and {views - 1} sub-views blended {report['view_blend']}"
        if tta != 1:
            setting += f", mean of {tta} turned/mirrored views"
        click.echo(f"accuracy: {report['accuracy']:.4f} on {report['n']} images ({setting})")
        if report.get("anchored_labels"):
            click.echo(
                f"anchored labels: {', '.join(report['anchored_labels'])} (not phrasings {report['model']} was "
                "trained on: read through the nearest trained classes)"
            )
        width = max(len(name) for name in report["per_class_accuracy"])
        for name, value in report["per_class_accuracy"].items():
            click.echo(f"  {name:<{width}}  {value:.4f}")
        if "base_to_new" in report:
            b2n = report["base_to_new"]
            click.echo(f"base {b2n['base']:.4f}  new {b2n['new']:.4f}  harmonic mean {b2n['harmonic_mean']:.4f}")


def _write_json_report(report: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def _report_retrieval(report: dict[str, Any], data: Path, json_path: Path | None, quiet: bool) -> None:
    from geobimors.train.retrieval import RECALL_KS

    if json_path is not None:
        _write_json_report(report, json_path)
    if not quiet:
        setting = f"{report['model']}, {report['views']} view{'s' if report['views'] > 1 else ''}"
        if report["views"] > 1:
            setting += f" ({report['view_aggregation']})"
        if "caption_guidance" in report:
            setting += f", caption guidance {report['caption_guidance']} ({report['captioner']})"
        if report.get("tta", 1) != 1:
            setting += f", mean of {report['tta']} turned/mirrored views"
        click.echo(
            f"image-text retrieval: {report['n_images']} images, {report['n_captions']} captions "
            f"({report['split']} split of {data.name}, {setting})"
        )
        for way, name in (("i2t", "image->text"), ("t2i", "text->image")):
            recalls = "  ".join(f"R@{k} {report[f'{way}_R@{k}']:5.1f}" for k in RECALL_KS)
            click.echo(f"  {name}  {recalls}")
        click.echo(f"mR {report['mR']:.2f}")


# ---------------------------------------------------------------------------- search / index


@cli.command("search")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("queries", nargs=-1)
@click.option("-k", "--top-k", "k", type=int, default=100, show_default=True, help="Hits per query.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="GeoPackage of the hits (layer 'hits')."
)
@click.option(
    "--raster",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a similarity COG: one score per chip cell, one band per query (exact search).",
)
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A file of text queries, one per line (with or instead of QUERIES).",
)
@click.option(
    "--like",
    multiple=True,
    help="Positive example: a chip id, an image file, or a point/polygon file over the scene (repeatable).",
)
@click.option("--unlike", multiple=True, help="Negative example, same kinds as --like (repeatable).")
@click.option(
    "--unlike-weight",
    type=FINITE,
    default=0.5,
    show_default=True,
    help="Weight w of the negatives: q = normalise(mean(like) - w * mean(unlike)).",
)
@click.option(
    "--within",
    default=None,
    help="Only chips overlapping an area: a vector file, or XMIN,YMIN,XMAX,YMAX in the store's CRS "
    "(append @EPSG:4326 for lon/lat).",
)
@click.option("--min-score", type=FINITE, default=None, help="Drop hits scoring below this cosine similarity.")
@click.option(
    "--caption-weight",
    type=FINITE,
    default=0.0,
    show_default=True,
    help="Blend the similarity of stored captions to the query text into the score (0..1; stores with captions).",
)
@click.option("-m", "--model", default=None, help="The store's model (default: the one it records).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--exact", is_flag=True, help="Ignore an index sidecar and search exactly.")
@click.option(
    "--nprobe",
    type=int,
    default=None,
    help="Index cells scanned per query (more: higher recall, slower).  [default: the index's, a quarter of its cells]",
)
@click.option("--overwrite", is_flag=True, help="Replace the outputs if they exist.")
@common_options
def search_command(
    store: Path,
    queries: tuple[str, ...],
    k: int,
    output: Path | None,
    raster: Path | None,
    queries_file: Path | None,
    like: tuple[str, ...],
    unlike: tuple[str, ...],
    unlike_weight: float,
    within: str | None,
    min_score: float | None,
    caption_weight: float,
    model: str | None,
    device: str,
    exact: bool,
    nprobe: int | None,
    overwrite: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Find the chips of an embeddings STORE that best match text QUERIES or examples.

    \b
    Examples:
      geobimors search scene.parquet "solar farm" "airport" -k 50 -o hits.gpkg
      geobimors search scene.parquet --like 3f2a9c0d11b7e4a5 --like clicks.gpkg --unlike water.gpkg
      geobimors search scene.parquet "harbour" --within 8.5,53.4,8.7,53.6@EPSG:4326 --raster heat.tif

    Without -o the best hits are listed. Text queries use the prompt-template ensemble of
    `geobimors map`; --like/--unlike examples combine as normalise(mean(like) - w * mean(unlike)).
    """
    from geobimors.embeddings.search import search
    from geobimors.errors import warn
    from geobimors.raster.similarity import check_raster_output, write_similarity_raster
    from geobimors.vector.gpkg import check_output
    from geobimors.vector.hits import write_hits

    if output is not None:
        check_output(output, overwrite)
    if raster is not None:
        check_raster_output(raster, overwrite)
    texts = list(queries)
    if queries_file is not None:
        texts += _read_queries_file(queries_file)
    if not texts and not like:
        raise InputError('nothing to search for: give a text query ("solar farm"), --queries FILE or --like examples')
    result = search(
        store,
        texts,
        like=like,
        unlike=unlike,
        unlike_weight=unlike_weight,
        k=k,
        within=within,
        min_score=min_score,
        caption_weight=caption_weight,
        raster=raster is not None,
        model=model,
        device=device,
        use_index=not exact,
        nprobe=nprobe,
    )
    for note in result.notes:
        warn(note)
    names = [q.name for q in result.queries]
    metadata = {"geobimors_version": __version__, "store": str(store), "queries": json.dumps(names), "k": str(k)}
    written = []
    if output is not None:
        written.append(write_hits(result.frame, names, output, overwrite=overwrite, metadata=metadata))
    if raster is not None and result.grids is not None:
        assert result.store is not None
        meta = result.store.meta
        written.append(
            write_similarity_raster(raster, result.grids, meta.grid_transform, meta.crs, overwrite=overwrite)
        )
    if quiet:
        return
    frame = result.frame
    click.echo(f"searched {result.n_rows:,} chips ({result.method}); {len(frame)} hits")
    for name in names:
        rows = frame[frame["query"] == name]
        best = f", best {rows['score'].iloc[0]:.4f}" if len(rows) else ""
        click.echo(f"  {_short(name)}: {len(rows)} hits{best}")
        if output is None:
            for row in rows.head(10).itertuples():
                click.echo(f"    {row.rank:>3}  {row.score:.4f}  {row.chip_id}  row {row.row} col {row.col}")
    for path in written:
        click.echo(f"output: {path}")


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _read_queries_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --queries file {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"--queries file {path} has no queries (one per line)")
    return lines


@cli.command("index")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--nlist", type=int, default=None, help="Inverted-file cells.  [default: about sqrt(rows)]")
@click.option(
    "--nprobe", type=int, default=None, help="Cells scanned per query by default.  [default: nlist / 4, at least 8]"
)
@click.option("--overwrite", is_flag=True, help="Rebuild an existing index.")
@common_options
def index_command(
    store: Path, nlist: int | None, nprobe: int | None, overwrite: bool, quiet: bool, debug: bool
) -> None:
    """Build an approximate nearest-neighbour index beside an embeddings STORE (STORE.index).

    `geobimors search` uses it for whole-store queries while it matches the store (a store
    rewritten after indexing makes it stale: search then notes it and searches exactly).
    """
    from geobimors.embeddings.dataset import open_stores
    from geobimors.embeddings.index import build_index

    if (nlist is not None and nlist < 1) or (nprobe is not None and nprobe < 1):
        raise InputError("--nlist and --nprobe must be at least 1")
    summary = build_index(open_stores(store), overwrite=overwrite, nlist=nlist, nprobe=nprobe)
    if not quiet:
        click.echo(
            f"index: {summary.n_rows:,} rows, {summary.nlist} cells, nprobe {summary.nprobe}, "
            f"{summary.bytes / 2**20:.1f} MiB, {summary.seconds:.1f} s"
        )
        click.echo(f"output: {summary.path}")


# Options that choose pixels: they were fixed when the store was made, so --from-embeddings refuses them.
_PIXEL_OPTIONS = (
    "chip_size", "overlap", "gsd", "bands", "scale_range", "percentiles", "nodata", "min_valid", "allow_no_crs",
    "batch_size", "caption_batch_size", "scheduler", "workers", "restart", "embeddings_dtype", "asset", "fail_fast",
    "crs", "keep_overlaps", "captions", "max_new_tokens", "num_beams", "tta", "views", "view_blend",
)  # fmt: skip


def _refuse_pixel_options(ctx: click.Context, scene: str | None, embeddings_path: Path | None) -> None:
    if scene is not None:
        raise InputError(
            f"--from-embeddings labels a store, not SCENE {scene!r}; drop SCENE, or drop --from-embeddings"
        )
    if embeddings_path is not None:
        raise InputError("--embeddings writes a store from a scene; it cannot be combined with --from-embeddings")
    for name in _PIXEL_OPTIONS:
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
            option = "--" + name.replace("_", "-")
            raise InputError(
                f"{option} does not apply with --from-embeddings: the chips were cut when the store was made; "
                "re-embed the scene to change them"
            )


def _map_from_embeddings(
    store_path: Path,
    labels_path: Path | None,
    output: Path | None,
    model: str | None,
    head_path: Path | None,
    top_k: int,
    device: str,
    precision: str,
    regions: bool,
    overwrite: bool,
    progress_mode: str,
    quiet: bool,
    literal_labels: bool = False,
) -> None:
    import time

    from geobimors.embeddings.classify import open_relabeller, relabel_to_file
    from geobimors.embeddings.dataset import open_stores
    from geobimors.labels import read_labels
    from geobimors.vector.gpkg import check_output

    out = output if output is not None else Path(_default_output(str(store_path)))
    check_output(out, overwrite)
    if labels_path is None and head_path is None:
        raise InputError("missing --labels FILE (one label per line), or a --head whose training classes to use")
    started = time.monotonic()
    store = open_stores(store_path)
    labels = read_labels(labels_path) if labels_path is not None else []
    relabeller = open_relabeller(store, labels, head_path, model, top_k, device, precision, literal_labels)
    summary = relabel_to_file(
        relabeller,
        out,
        overwrite=overwrite,
        regions=regions,
        progress_mode="none" if quiet else progress_mode,
        load_seconds=time.monotonic() - started,
    )
    if not quiet and progress_mode != "jsonl":
        for line in summary.lines():
            click.echo(line)


@cli.command("embed")
@click.argument("scenes", nargs=-1, required=True, metavar="SCENE...")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Embeddings store (GeoParquet); several scenes: a directory, one store per scene (DIR/NAME.parquet).  "
    "[default: SCENE_NAME.embeddings.parquet in the current directory]",
)
@click.option("-m", "--model", default="mini", show_default=True, help=MODEL_HELP)
@chip_options
@safety_options
@click.option("--batch-size", type=int, default=32, show_default=True, help="Chips per task and forward pass.")
@tta_option
@device_options
@dask_options
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Number type of the stored embeddings (float16 halves the file; top-1 labels agree >= 99.5%).",
)
@click.option(
    "--captions",
    "captioner",
    is_flag=False,
    flag_value="auto",
    default=None,
    help="Also store each chip's caption made by CAPTIONER (mini, or a BLIP-2 or BLIP id or folder; bare "
    "--captions: Salesforce/blip-image-captioning-base when downloaded, else the bundled mini) and its "
    "caption-encoder embedding.",
)
@click.option(
    "--caption-encoder",
    default="minilm",
    show_default=True,
    help="Text encoder of the stored caption embeddings ('none': captions only).",
)
@generation_options
@scenes_options
@run_options
@common_options
def embed_command(
    scenes: tuple[str, ...],
    output: Path | None,
    model: str,
    batch_size: int,
    tta: int,
    device: str,
    precision: str,
    scheduler: str | None,
    workers: int | None,
    dtype: str,
    captioner: str | None,
    caption_encoder: str,
    max_new_tokens: int,
    num_beams: int,
    asset: str | None,
    fail_fast: bool,
    overwrite: bool,
    restart: bool,
    progress_mode: str,
    quiet: bool,
    debug: bool,
    **chip: Any,
) -> None:
    """Embed every chip of SCENE once into a GeoParquet store, to label and search without pixels.

    Chips are cut exactly as `geobimors map` cuts them with the same options. The
    store is GeoParquet 1.1 (geopandas, DuckDB, GDAL, lonboard open it); an
    interrupted run resumes when the same command runs again. Several scenes (paths,
    folders, quoted globs, @list.txt, STAC files) make a dataset directory with one
    store per scene; re-running with more scenes embeds only the new ones.

    \b
    Examples:
      geobimors embed scene.tif -o scene.parquet
      geobimors embed tiles/ -o region.parquet/
      geobimors map --from-embeddings scene.parquet -l labels.txt -o labels.gpkg
    """
    from geobimors.embeddings.embed import embed_to_file, plan_embed
    from geobimors.embeddings.store import check_store_output
    from geobimors.run.execute import make_executor
    from geobimors.run.plan import MapSettings

    # The captioner is resolved (and 'none' refused) before any work.
    spec = _output_captioner(captioner, max_new_tokens, num_beams) if captioner is not None else None
    sources = _scene_sources(scenes, asset, chip["allow_network"])
    chip["tta"] = tta
    if sources is not None and len(sources) > 1:
        _embed_scenes(sources, output, model, batch_size, device, precision, scheduler, workers, dtype, spec,
                      caption_encoder, fail_fast, overwrite, restart, progress_mode, quiet, chip)  # fmt: skip
        return
    scene = sources[0].path if sources is not None else scenes[0]
    out = (
        output if output is not None else Path(_default_output(scene).replace(".geobimors.gpkg", ".embeddings.parquet"))
    )
    check_store_output(out, overwrite)  # fail on the output before any slow work
    _check_workers(workers)
    settings = MapSettings(
        scene=scene,
        model=model,
        batch_size=batch_size,
        device=device,
        precision=precision,
        tta=chip["tta"],
        **_chip_settings(chip),
        **_safety_settings(chip),
    )
    plan = plan_embed(settings, dtype, spec, None if caption_encoder.lower() == "none" else caption_encoder)
    executor = make_executor(scheduler, workers, gpu=device == "cuda")
    try:
        summary = embed_to_file(
            plan, out, overwrite=overwrite, restart=restart, progress_mode="none" if quiet else progress_mode,
            executor=executor,
        )  # fmt: skip
    finally:
        executor.close()
    if not quiet and progress_mode != "jsonl":
        from geobimors.embeddings.store import open_store

        for line in summary.lines(open_store(out).meta):
            click.echo(line)
    if summary.n_failed:
        click.echo(
            f"Warning: {summary.n_failed} chips could not be read (first at {summary.first_failure}); the store "
            "has every other chip",
            err=True,
        )
        sys.exit(1)


def _embed_scenes(
    sources: list[Any],
    output: Path | None,
    model: str,
    batch_size: int,
    device: str,
    precision: str,
    scheduler: str | None,
    workers: int | None,
    dtype: str,
    spec: Any,
    caption_encoder: str,
    fail_fast: bool,
    overwrite: bool,
    restart: bool,
    progress_mode: str,
    quiet: bool,
    chip: dict[str, Any],
) -> None:
    """``geobimors embed`` of several scenes: a directory with one store per scene."""
    from geobimors.embeddings.multi import check_dataset_output, embed_dataset, plan_dataset
    from geobimors.run.execute import make_executor
    from geobimors.run.plan import MapSettings

    if output is None:
        raise InputError(f"{len(sources)} scenes make a dataset directory (one store per scene): name it with -o DIR/")
    directory = check_dataset_output(output, sources)
    _check_workers(workers)
    settings = MapSettings(
        scene=sources[0].path,
        model=model,
        batch_size=batch_size,
        device=device,
        precision=precision,
        tta=chip["tta"],
        **_chip_settings(chip),
        **_safety_settings(chip),
    )
    encoder = None if caption_encoder.lower() == "none" else caption_encoder
    scenes = plan_dataset(sources, directory, settings, dtype, spec, encoder, fail_fast)
    executor = make_executor(scheduler, workers, gpu=device == "cuda")
    try:
        summary = embed_dataset(scenes, directory, overwrite, restart, fail_fast,
                                "none" if quiet else progress_mode, executor)  # fmt: skip
    finally:
        executor.close()
    if not quiet and progress_mode != "jsonl":
        for line in summary.lines():
            click.echo(line)
    failed = summary.failed_scenes
    if failed:
        click.echo(
            f"Warning: {len(failed)} of {len(summary.scenes)} scenes failed (first: {failed[0].source.name}: "
            f"{failed[0].reason}); the others are stored; fix or drop them and re-run the same command: stored "
            "scenes are kept",
            err=True,
        )
    if summary.n_failed:
        click.echo(f"Warning: {summary.n_failed} chips could not be read; the stores have every other chip", err=True)
    if failed or summary.n_failed:
        sys.exit(1)


def _evaluate_captioning(
    data: Path,
    captioner: str,
    split: str,
    images_root: Path | None,
    device: str,
    precision: str,
    json_path: Path | None,
    quiet: bool,
) -> None:
    from geobimors.train.captioning import METRICS, evaluate_captioning

    report = evaluate_captioning(data, captioner, split, images_root, device, precision)
    if json_path is not None:
        _write_json_report(report, json_path)
    if not quiet:
        click.echo(f"captioning: {report['n_images']} images ({split} split of {data.name}, captioner {captioner})")
        click.echo("  " + "  ".join(f"{name} {report[name]:.3f}" for name in METRICS))


@cli.command("assess")
@click.argument("map_path", metavar="MAP", type=click.Path(path_type=Path))
@click.option(
    "-r",
    "--reference",
    type=click.Path(path_type=Path),
    required=True,
    help="Reference map: a classified raster (integer classes) or labelled polygons.",
)
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV of 'map label,reference class' rows (raster classes are pixel values).  "
    "[default: map labels are reference class names]",
)
@click.option("--class-column", default="label", show_default=True, help="Class attribute of reference polygons.")
@click.option("--band", type=int, default=1, show_default=True, help="Band of the reference raster.")
@click.option(
    "--min-purity",
    type=FINITE,
    default=0.0,
    show_default=True,
    help="Score only chips whose majority reference class covers this share of them (0: all, by majority).",
)
@click.option(
    "--min-cover",
    type=FINITE,
    default=0.5,
    show_default=True,
    help="Score only chips with at least this share under the reference (not nodata, inside a polygon).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write REPORT.json, REPORT.csv (per class + matrix) and REPORT.chips.csv (per chip, with purity).",
)
@click.option("--overwrite", is_flag=True, help="Replace the reports if they exist.")
@common_options
def assess_command(
    map_path: Path,
    reference: Path,
    mapping: Path | None,
    class_column: str,
    band: int,
    min_purity: float,
    min_cover: float,
    output: Path | None,
    overwrite: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Accuracy of a geobimors MAP (GeoPackage) against a reference map.

    Each chip gets the reference class covering most of it (its purity is that
    class's share); prints the confusion matrix, overall accuracy, Cohen's kappa,
    per-class precision (user's accuracy), recall (producer's accuracy) and F1,
    the majority-class baseline and area-weighted figures.
    """
    from geobimors.accuracy import assess

    if output is not None:
        stem = output.with_suffix("") if output.suffix.lower() in (".json", ".csv") else output
        for suffix in (".json", ".csv", ".chips.csv"):
            existing = stem.with_name(stem.name + suffix)
            _check_report_output(existing, overwrite, "-o", suffix)
    result = assess(
        map_path,
        reference,
        mapping=mapping,
        class_column=class_column,
        band=band,
        min_purity=min_purity,
        min_cover=min_cover,
    )
    written = result.write(output, overwrite=overwrite) if output is not None else []
    if not quiet:
        for line in result.lines():
            click.echo(line)
        for path in written:
            click.echo(f"output: {path}")


def _default_output(scene: str) -> str:
    name = scene.rstrip("/").split("/")[-1].split("?")[0] or "scene"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem}.geobimors.gpkg"


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so a run stops as cleanly as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


# Commands whose finished work survives an interruption: map and embed keep a run store, caption its cache.
RESUMABLE_COMMANDS = ("map", "embed", "caption")


def _report_interrupt(args: list[str], exc: KeyboardInterrupt) -> None:
    """Say what an interruption left (resumable work only where the command keeps it) and exit 130 / 143."""
    what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
    command = next((a for a in args if not a.startswith("-")), "")
    if command in RESUMABLE_COMMANDS:
        click.echo(f"{what}: finished batches are saved; run the same command again to resume.", err=True)
    else:
        click.echo(f"{what} before the output was finished; run the command again to start over.", err=True)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geobimors`` console script."""
    import signal

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _setup_messages(debug)
    if argv is None:  # the console script: a SIGTERM (batch schedulers, kill) stops like Ctrl-C
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=args, prog_name="geobimors", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (and our SIGTERM) into Abort
        if debug:
            raise
        cause = exc.__cause__
        if isinstance(cause, KeyboardInterrupt):
            _report_interrupt(args, cause)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # bare `geobimors`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        # One line like every other error, with where to look instead of click's usage block.
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"Error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GeobimorsError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        _report_interrupt(args, exc)
    except Exception as exc:  # last resort: one line, no traceback
        if debug:
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"Error: unexpected {type(exc).__name__}: {text} (re-run with --debug for details)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
