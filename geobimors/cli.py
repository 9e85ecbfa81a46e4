"""The ``geobimors`` command line: a thin layer over the core API.

Errors a user can fix are printed as one line (``Error: ...``) with exit code 2
(bad input) or 1 (runtime failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from geobimors import __version__
from geobimors.errors import GeobimorsError, GeobimorsWarning, InputError

F = TypeVar("F", bound=Callable[..., Any])


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
    logging.basicConfig(level=logging.ERROR)
    for name in ("open_clip", "root", "transformers", "huggingface_hub", "rasterio", "distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
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
        "[default: the model's native resolution if it declares one, else 'scene']",
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
        type=float,
        default=0.5,
        show_default=True,
        help="Skip chips with a smaller fraction of valid (not nodata) pixels.",
    ),
    click.option("--allow-no-crs", is_flag=True, help="Map scenes without a CRS in pixel coordinates."),
)

captioner_options = _options(
    click.option(
        "--captioner",
        default=None,
        help="BLIP-2 or BLIP checkpoint (Hugging Face id or folder), or 'none' (no captions; a learned "
        "empty-caption embedding).  [default: Salesforce/blip-image-captioning-base; the paper uses "
        "Salesforce/blip2-flan-t5-xl]",
    ),
    click.option("--max-new-tokens", type=int, default=16, show_default=True, help="Caption length limit."),
    click.option("--num-beams", type=int, default=4, show_default=True, help="Beam search width for captions."),
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
    from geobimors.models.captions import CPU_CAPTIONER, CaptionerSpec

    if max_new_tokens < 1 or num_beams < 1:
        raise InputError("--max-new-tokens and --num-beams must be at least 1")
    return CaptionerSpec(name or CPU_CAPTIONER, max_new_tokens, num_beams)


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
@click.argument("scene")
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
    help="Output GeoPackage.  [default: SCENE_NAME.geobimors.gpkg in the current directory]",
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
@click.option("--batch-size", type=int, default=32, show_default=True, help="Chips per classification task.")
@click.option(
    "--caption-batch-size",
    type=int,
    default=16,
    show_default=True,
    help="Chips per captioning task (heads with a captioner).",
)
@click.option("--top-k", type=int, default=3, show_default=True, help="Best labels kept per chip.")
@device_options
@click.option(
    "--scheduler",
    default=None,
    envvar="DASK_SCHEDULER_ADDRESS",
    help="Run on an existing Dask cluster (tcp://HOST:PORT; also DASK_SCHEDULER_ADDRESS).",
)
@click.option(
    "--workers", type=int, default=None, help="Start a local Dask cluster of N worker processes.  [default: in-process]"
)
@click.option("--regions", is_flag=True, help="Also write a 'regions' layer of adjacent same-label chips merged.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--restart", is_flag=True, help="Discard an unfinished earlier run instead of resuming it.")
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(["bar", "jsonl", "none"]),
    default="bar",
    show_default=True,
    help="Progress on stderr: a bar, JSON lines for programs, or none.",
)
@common_options
def map_command(
    scene: str,
    labels_path: Path | None,
    output: Path | None,
    model: str | None,
    head_path: Path | None,
    batch_size: int,
    caption_batch_size: int,
    top_k: int,
    device: str,
    precision: str,
    scheduler: str | None,
    workers: int | None,
    regions: bool,
    overwrite: bool,
    restart: bool,
    progress_mode: str,
    quiet: bool,
    debug: bool,
    **chip: Any,
) -> None:
    """Classify every chip of SCENE and write labeled polygons to a GeoPackage.

    SCENE is any raster GDAL reads: GeoTIFF, COG, VRT, or a URL (https://, /vsicurl/).
    An interrupted run resumes when the same command runs again. With --scheduler
    or --workers the chips are processed on a Dask cluster; every worker reads its
    own windows. With --device cuda, tasks ask for a GPU worker resource
    (`dask worker ... --resources GPU=1`, or dask-cuda's LocalCUDACluster).
    Exit code 1 when some windows could not be read (they are in the 'failed' layer).
    """
    from geobimors.labels import read_labels
    from geobimors.run.execute import DistributedExecutor, make_executor
    from geobimors.run.pipeline import map_to_file
    from geobimors.run.plan import MapSettings, plan_map
    from geobimors.vector.gpkg import check_output

    out = output if output is not None else Path(_default_output(scene))
    check_output(out, overwrite)  # fail on the output before any slow work
    if labels_path is None and head_path is None:
        raise InputError("missing --labels FILE (one label per line), or a --head whose training classes to use")
    labels = read_labels(labels_path) if labels_path is not None else []
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    settings = MapSettings(
        scene=scene,
        labels=tuple(labels),
        model=model,
        batch_size=batch_size,
        caption_batch_size=caption_batch_size,
        top_k=top_k,
        device=device,
        precision=precision,
        head=str(head_path) if head_path is not None else None,
        **_chip_settings(chip),
    )
    plan = plan_map(settings)

    def announce(executor: object) -> None:
        if quiet or not isinstance(executor, DistributedExecutor):
            return
        link = executor.dashboard_link
        click.echo(f"Dask: {executor.description}" + (f", dashboard {link}" if link else ""), err=True)

    executor = make_executor(scheduler, workers, gpu=device == "cuda")
    try:
        summary = map_to_file(
            plan,
            out,
            overwrite=overwrite,
            regions=regions,
            restart=restart,
            progress_mode="none" if quiet else progress_mode,
            executor=executor,
            on_start=announce,
        )
    finally:
        executor.close()
    if not quiet and progress_mode != "jsonl":
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
    if output is not None and output.exists() and not overwrite:
        raise InputError(f"output {output} already exists; pass --overwrite to replace it")
    rows, cached = caption_source(
        source,
        load_captioner(spec, device, precision),
        model,
        _chip_settings(chip),
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
    default="probe",
    show_default=True,
    help="probe: linear probe anchored to the zero-shot classifier; tip: Tip-Adapter cache (both fit on frozen "
    "image embeddings in seconds); bimors/coop/cocoop: prompt learners (epochs of backpropagation through the "
    "text tower). The default was the most accurate at 4-16 shots in docs/benchmarks.md, and the fastest.",
)
@click.option(
    "--shots",
    type=int,
    default=None,
    help="Training images per class.  [default: 16 for image folders; every covered chip for polygons/points]",
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=0.009, show_default=True, help="Peak SGD learning rate (cosine schedule).")
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
    type=float,
    default=0.75,
    show_default=True,
    help="Polygons/points: a map-grid chip trains as class K when K covers at least this fraction of it.",
)
@chip_size_option
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

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --lr positive")
    spec = _captioner_spec(captioner, max_new_tokens, num_beams) if head_kind == "bimors" else None
    polygon_options = (
        {"scene": scene, "label_column": label_column, "min_purity": min_purity, "chip_size": chip_size}
        if scene
        else {}
    )
    head, result = train(
        data,
        output,
        model=model,
        head=head_kind,
        shots=shots,
        settings=TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        captioner=spec.name if spec is not None else "none",
        caption_encoder=caption_encoder,
        n_ctx=n_ctx,
        ctx_init=ctx_init,
        labels_file=labels_path,
        classes=classes,
        val_shots=val_shots,
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
@click.option("--limit-per-class", type=int, default=None, help="Evaluate at most N images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --limit-per-class sampling.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--confusion", type=click.Path(path_type=Path), default=None, help="Write the confusion matrix CSV.")
@device_options
@common_options
def evaluate_command(
    data: Path,
    model: str | None,
    head_path: Path | None,
    zero_shot: bool,
    labels_path: Path | None,
    protocol: str,
    limit_per_class: int | None,
    seed: int,
    batch_size: int,
    json_path: Path | None,
    confusion: Path | None,
    device: str,
    precision: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Accuracy of a head or of zero-shot CLIP on an ImageFolder tree (per class, confusion, base-to-new).

    A head evaluated on another dataset's classes classifies among those classes
    (cross-dataset evaluation): prompt learners generalise to new class names.
    """
    from geobimors.train.api import evaluate_data

    if zero_shot and head_path is not None:
        raise InputError("--zero-shot and --head exclude each other")
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
    )
    evaluation = report.pop("_evaluation")
    if json_path is not None:
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(json_path)
    if confusion is not None:
        evaluation.write_confusion_csv(confusion)
    if not quiet:
        click.echo(f"accuracy: {report['accuracy']:.4f} on {report['n']} images ({report['head']}, {report['model']})")
        width = max(len(name) for name in report["per_class_accuracy"])
        for name, value in report["per_class_accuracy"].items():
            click.echo(f"  {name:<{width}}  {value:.4f}")
        if "base_to_new" in report:
            b2n = report["base_to_new"]
            click.echo(f"base {b2n['base']:.4f}  new {b2n['new']:.4f}  harmonic mean {b2n['harmonic_mean']:.4f}")


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
    type=float,
    default=0.0,
    show_default=True,
    help="Score only chips whose majority reference class covers this share of them (0: all, by majority).",
)
@click.option(
    "--min-cover",
    type=float,
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
            if existing.exists() and not overwrite:
                raise InputError(f"output {existing} already exists; pass --overwrite to replace it")
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
            what = "Terminated" if isinstance(cause, Terminated) else "Interrupted"
            click.echo(f"{what}: finished batches are saved; run the same command again to resume.", err=True)
            sys.exit(143 if isinstance(cause, Terminated) else 130)
        click.echo("Aborted.", err=True)
        sys.exit(130)
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
        what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        click.echo(f"{what}: finished batches are saved; run the same command again to resume.", err=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except Exception as exc:  # last resort: one line, no traceback
        if debug:
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"Error: unexpected {type(exc).__name__}: {text} (re-run with --debug for details)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
