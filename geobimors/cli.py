"""The ``geobimors`` command line: a thin layer over :mod:`geobimors.run.pipeline`.

Errors a user can fix are printed as one line (``Error: ...``) with exit code 2
(bad input) or 1 (runtime failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

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


def common_options(func: F) -> F:
    """Options every command has."""
    func = click.option("--debug", is_flag=True, help="Show tracebacks and library logs on errors.")(func)
    func = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")(func)
    return func


def _split_numbers(text: str | None, option: str, kind: type = float) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. 3,2,1") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="geobimors")
def cli() -> None:
    """Map what is on the ground in satellite and aerial scenes with vision-language models.

    \b
    Examples:
      geobimors map scene.tif --labels labels.txt
      geobimors map scene.tif -l labels.txt --model ViT-B-16:openai --chip-size 640m -o out.gpkg
    """


@cli.command("map")
@click.argument("scene")
@click.option(
    "-l",
    "--labels",
    "labels_path",
    required=True,
    type=click.Path(dir_okay=True, path_type=Path),
    help="Labels file: one label per line, '#' comments, optional 'label: prompt text'.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output GeoPackage.  [default: SCENE_NAME.geobimors.gpkg in the current directory]",
)
@click.option(
    "-m",
    "--model",
    default="mini",
    show_default=True,
    help="CLIP model: mini (bundled, offline), ARCH:TAG (ViT-B-16:openai), ARCH:/path/weights, "
    "ARCH:hf-hub:ORG/REPO/FILE, hf-hub:ORG/REPO, or a local-dir: model folder.",
)
@click.option(
    "--chip-size",
    default=None,
    help="Chip edge in pixels (224) or ground units (640m, 1.5km).  [default: the model's, else 224]",
)
@click.option(
    "--overlap", default="0", show_default=True, help="Overlap between neighbouring chips, in the units of --chip-size."
)
@click.option(
    "--gsd",
    default=None,
    help="Resample chips to this ground resolution in m/px; 'scene' keeps the scene's. "
    "[default: the model's native resolution if it declares one, else 'scene']",
)
@click.option("--bands", default=None, help="1-based bands for R,G,B (e.g. 3,2,1), or one band for grey.")
@click.option(
    "--scale-range",
    default=None,
    help="Map MIN,MAX (or RMIN,RMAX,GMIN,GMAX,BMIN,BMAX) to 0..255 instead of scene percentiles.",
)
@click.option(
    "--percentiles",
    default="2,98",
    show_default=True,
    help="Scene percentiles mapped to 0..255 for 16-bit and float imagery.",
)
@click.option("--nodata", type=float, default=None, help="Nodata value, overriding the scene's masks.")
@click.option(
    "--min-valid",
    type=float,
    default=0.5,
    show_default=True,
    help="Skip chips with a smaller fraction of valid (not nodata) pixels.",
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Chips per forward pass.")
@click.option("--top-k", type=int, default=3, show_default=True, help="Best labels kept per chip.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="bf16 autocast works on CPU and GPU; fp16 needs CUDA.",
)
@click.option("--regions", is_flag=True, help="Also write a 'regions' layer of adjacent same-label chips merged.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--restart", is_flag=True, help="Discard an unfinished earlier run instead of resuming it.")
@click.option("--allow-no-crs", is_flag=True, help="Map scenes without a CRS in pixel coordinates.")
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
    labels_path: Path,
    output: Path | None,
    model: str,
    chip_size: str | None,
    overlap: str,
    gsd: str | None,
    bands: str | None,
    scale_range: str | None,
    percentiles: str,
    nodata: float | None,
    min_valid: float,
    batch_size: int,
    top_k: int,
    device: str,
    precision: str,
    regions: bool,
    overwrite: bool,
    restart: bool,
    allow_no_crs: bool,
    progress_mode: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Classify every chip of SCENE and write labeled polygons to a GeoPackage.

    SCENE is any raster GDAL reads: GeoTIFF, COG, VRT, or a URL (https://, /vsicurl/).
    An interrupted run resumes when the same command runs again.
    """
    from geobimors.labels import read_labels
    from geobimors.run.pipeline import map_to_file
    from geobimors.run.plan import MapSettings, plan_map
    from geobimors.vector.gpkg import check_output

    out = output if output is not None else Path(_default_output(scene))
    check_output(out, overwrite)  # fail on the output before any slow work
    labels = read_labels(labels_path)
    pct = _split_numbers(percentiles, "--percentiles")
    if pct is None or len(pct) != 2:
        raise InputError(f"--percentiles {percentiles!r}: expected LOW,HIGH such as 2,98")
    band_list = _split_numbers(bands, "--bands", int)
    settings = MapSettings(
        scene=scene,
        labels=tuple(labels),
        model=model,
        chip_size=chip_size,
        overlap=overlap,
        gsd=_parse_gsd(gsd),
        keep_scene_gsd=gsd is not None and gsd.strip().lower() == "scene",
        bands=band_list,
        scale_range=scale_range,
        percentiles=(pct[0], pct[1]),
        nodata=nodata,
        min_valid=min_valid,
        batch_size=batch_size,
        top_k=top_k,
        device=device,
        precision=precision,
        allow_no_crs=allow_no_crs,
    )
    plan = plan_map(settings)
    summary = map_to_file(
        plan,
        out,
        overwrite=overwrite,
        regions=regions,
        restart=restart,
        progress_mode="none" if quiet else progress_mode,
    )
    if not quiet and progress_mode != "jsonl":
        for line in summary.lines():
            click.echo(line)


def _default_output(scene: str) -> str:
    name = scene.rstrip("/").split("/")[-1].split("?")[0] or "scene"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem}.geobimors.gpkg"


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geobimors`` console script."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _setup_messages(debug)
    try:
        cli.main(args=args, prog_name="geobimors", standalone_mode=False)
    except click.exceptions.Abort:
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
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("Interrupted: finished batches are saved; run the same command again to resume.", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"Error: unexpected {type(exc).__name__}: {text} (re-run with --debug for details)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
