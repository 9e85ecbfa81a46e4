"""Runs the geobimors command line for the plugin: no torch, no geobimors import, no shell.

The plugin drives ``geobimors map`` (and ``geobimors assess``) in the Python environment the user configured
(the ``geobimors`` executable, or a Python with geobimors installed), reads its
JSON-lines progress, and reports its one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

SETTINGS_KEY = "geobimors/executable"
INSTALL_HINT = (
    "install geobimors in a Python environment (pip install geobimors) and set the path of its "
    "`geobimors` executable, or of its Python, in the geobimors plugin settings (or put it on PATH)"
)


class EnvironmentProblem(Exception):
    """The configured geobimors environment is missing or broken (message says how to fix it)."""


class RunFailed(Exception):
    """The CLI reported an error (its one-line message) or failed."""


def scene_arguments(scene: Union[str, Sequence[str]]) -> List[str]:
    """The SCENE arguments of ``map``/``embed``: one path, or several (raster files, folders, layers' sources).

    Empty entries are dropped and repeated ones kept once, in order.

    Raises:
        ValueError: when nothing is left.
    """
    items = [scene] if isinstance(scene, str) else list(scene)
    scenes: List[str] = []
    for item in items:
        text = str(item).strip()
        if text and text not in scenes:
            scenes.append(text)
    if not scenes:
        raise ValueError("choose a raster layer, raster files or a folder of rasters")
    return scenes


def describe_scenes(scene: Union[str, Sequence[str]]) -> str:
    """A short name of what is mapped: the scene, or 'N scenes (first, ...)'."""
    scenes = scene_arguments(scene)
    if len(scenes) == 1:
        return scenes[0]
    return f"{len(scenes)} scenes ({os.path.basename(scenes[0].rstrip(os.sep))}, ...)"


@dataclass
class MapRequest:
    """The options of one ``geobimors map`` run.

    ``scene`` is one raster (a path, URL or folder) or a list of them: several SCENE arguments,
    mapped into one output by the CLI.
    """

    scene: Union[str, List[str]]
    output: str
    labels: List[str] = field(default_factory=list)
    labels_file: Optional[str] = None
    model: Optional[str] = None
    head: Optional[str] = None
    chip_size: Optional[str] = None
    overlap: Optional[str] = None
    bands: Optional[str] = None
    device: str = "auto"
    overwrite: bool = True
    regions: bool = False
    allow_network: bool = False  # let a local file (a VRT, ...) read network sources
    captioner: Optional[str] = None  # a 'caption' attribute per chip by this captioner (mini: bundled)
    tta: int = 1  # classify the mean of 2, 4 or 8 turned/mirrored views of each chip (N times the work)
    views: int = 1  # 6: each chip read at twice the pixels, blended with its quadrants and centre (~6x the work)
    literal_labels: bool = False  # zero-shot: no anchoring of labels the bundled model was not trained on
    extra: List[str] = field(default_factory=list)


def command_prefix(configured: Optional[str]) -> List[str]:
    """The command that starts the CLI: ``[geobimors]`` or ``[python, -m, geobimors.cli]``.

    Raises:
        EnvironmentProblem: nothing configured and no ``geobimors`` on PATH, or
            the configured file does not exist.
    """
    path = (configured or "").strip()
    if not path:
        found = shutil.which("geobimors")
        if found is None:
            raise EnvironmentProblem("geobimors was not found on PATH; " + INSTALL_HINT)
        return [found]
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise EnvironmentProblem(f"the configured geobimors path {path} is not an executable file; " + INSTALL_HINT)
    if "python" in os.path.basename(path).lower():
        return [path, "-m", "geobimors.cli"]
    return [path]


def check_environment(prefix: List[str], timeout: float = 60.0) -> str:
    """Run ``--version``; return the version text.

    Raises:
        EnvironmentProblem: the command fails (a broken environment).
    """
    try:
        done = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run {prefix[0]} ({exc}); " + INSTALL_HINT) from None
    if done.returncode != 0 or "geobimors" not in done.stdout:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"{' '.join(prefix)} --version failed ({detail}); " + INSTALL_HINT)
    return done.stdout.strip()


def build_args(request: MapRequest, labels_path: Optional[str]) -> List[str]:
    """Arguments of ``geobimors map`` for a request (a list: never through a shell)."""
    args = ["map", *scene_arguments(request.scene), "-o", request.output, "--progress", "jsonl"]
    args += ["--device", request.device]
    if labels_path:
        args += ["--labels", labels_path]
    for option, value in (
        ("--model", request.model),
        ("--head", request.head),
        ("--chip-size", request.chip_size),
        ("--overlap", request.overlap),
        ("--bands", request.bands),
        ("--captions", request.captioner),
    ):
        if value not in (None, ""):
            args += [option, str(value)]
    if request.tta != 1:
        args += ["--tta", str(request.tta)]
    if request.views != 1:
        args += ["--views", str(request.views)]
    if request.literal_labels:
        args.append("--literal-labels")
    if request.overwrite:
        args.append("--overwrite")
    if request.regions:
        args.append("--regions")
    if request.allow_network:
        args.append("--allow-network")
    return args + list(request.extra)


@dataclass
class EmbedRequest:
    """The options of one ``geobimors embed`` run (several scenes: ``output`` is a folder of stores)."""

    scene: Union[str, List[str]]
    output: str
    model: Optional[str] = None
    chip_size: Optional[str] = None
    overlap: Optional[str] = None
    bands: Optional[str] = None
    dtype: str = "float16"
    captioner: Optional[str] = None
    device: str = "auto"
    overwrite: bool = True
    extra: List[str] = field(default_factory=list)


def build_embed_args(request: EmbedRequest) -> List[str]:
    """Arguments of ``geobimors embed`` for a request (a list: never through a shell)."""
    args = ["embed", *scene_arguments(request.scene), "-o", request.output, "--progress", "jsonl"]
    args += ["--device", request.device]
    args += ["--dtype", request.dtype]
    for option, value in (
        ("--model", request.model),
        ("--chip-size", request.chip_size),
        ("--overlap", request.overlap),
        ("--bands", request.bands),
        ("--captions", request.captioner),
    ):
        if value not in (None, ""):
            args += [option, str(value)]
    if request.overwrite:
        args.append("--overwrite")
    return args + list(request.extra)


def run_embed(
    prefix: List[str],
    request: EmbedRequest,
    on_progress: Callable[[float], None] = lambda fraction: None,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run ``geobimors embed``; report progress (0..100); stop it when cancelled (a re-run resumes)."""
    return run_command(prefix, build_embed_args(request), request.output, on_progress, is_cancelled)


def write_labels(labels: Iterable[str]) -> str:
    """Write labels to a temporary UTF-8 labels file; return its path."""
    handle, path = tempfile.mkstemp(prefix="geobimors-labels-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        for label in labels:
            if label.strip():
                f.write(label.strip() + "\n")
    return path


@dataclass
class RunResult:
    """How a run ended."""

    output: str
    returncode: int
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    cancelled: bool = False
    lines: List[str] = field(default_factory=list)


def run_map(
    prefix: List[str],
    request: MapRequest,
    on_progress: Callable[[float], None] = lambda fraction: None,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run ``geobimors map``; report progress (0..100); stop it when cancelled.

    Cancelling sends SIGINT (the CLI stops cleanly and keeps finished batches,
    so running the same request again resumes), then terminates it if needed.
    """
    labels_path = request.labels_file
    temporary = None
    if labels_path is None and request.labels:
        labels_path = temporary = write_labels(request.labels)
    try:
        return run_command(prefix, build_args(request, labels_path), request.output, on_progress, is_cancelled)
    finally:
        if temporary:
            Path(temporary).unlink(missing_ok=True)


def run_command(
    prefix: List[str],
    args: List[str],
    output: str,
    on_progress: Callable[[float], None] = lambda fraction: None,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run a geobimors command with ``--progress jsonl``; collect its progress, warnings and one-line error."""
    try:
        process = subprocess.Popen(
            prefix + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except OSError as exc:
        raise EnvironmentProblem(f"could not start {prefix[0]} ({exc}); " + INSTALL_HINT) from None
    result = RunResult(output, returncode=-1)
    stop = threading.Event()

    def watch_cancel() -> None:
        while not stop.wait(0.2):
            if is_cancelled() and process.poll() is None:
                result.cancelled = True
                process.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 15
                while process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if process.poll() is None:
                    process.terminate()
                return

    watcher = threading.Thread(target=watch_cancel, daemon=True)
    watcher.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:
            line = line.strip()
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                total = event.get("total") or 0
                if total:
                    on_progress(100.0 * float(event.get("done", 0)) / float(total))
            elif line.startswith("Error:"):
                result.error = line[len("Error:") :].strip()
            elif line.startswith("Warning:"):
                result.warnings.append(line[len("Warning:") :].strip())
        process.wait()
    finally:
        stop.set()
        watcher.join(timeout=1)
    result.returncode = process.returncode
    if result.returncode != 0 and not result.cancelled and result.error is None:
        result.error = f"geobimors stopped with exit code {result.returncode}"
    return result


@dataclass
class SearchRequest:
    """The options of one ``geobimors search`` run."""

    store: str
    output: str
    queries: List[str] = field(default_factory=list)
    like: List[str] = field(default_factory=list)
    unlike: List[str] = field(default_factory=list)
    k: int = 100
    within: Optional[str] = None
    min_score: Optional[float] = None
    raster: Optional[str] = None
    device: str = "auto"
    overwrite: bool = True


def build_search_args(request: SearchRequest) -> List[str]:
    """Arguments of ``geobimors search`` (a list: never through a shell).

    ``-q``: the hits go to the GeoPackage; stderr still carries warnings and the one-line error.
    """
    args = ["search", request.store, *request.queries, "-k", str(int(request.k)), "-o", request.output, "-q"]
    args += ["--device", request.device]
    for example in request.like:
        args += ["--like", example]
    for example in request.unlike:
        args += ["--unlike", example]
    if request.within:
        args += ["--within", request.within]
    if request.min_score is not None:
        args += ["--min-score", repr(float(request.min_score))]
    if request.raster:
        args += ["--raster", request.raster]
    if request.overwrite:
        args.append("--overwrite")
    return args


@dataclass
class AssessRequest:
    """The options of one ``geobimors assess`` run."""

    map_path: str
    reference: str
    output: str
    mapping: Optional[str] = None
    class_column: Optional[str] = None
    min_purity: Optional[float] = None
    overwrite: bool = True


def build_assess_args(request: AssessRequest) -> List[str]:
    """Arguments of ``geobimors assess`` for a request (a list: never through a shell)."""
    args = ["assess", request.map_path, "--reference", request.reference, "-o", request.output]
    if request.mapping:
        args += ["--mapping", request.mapping]
    if request.class_column:
        args += ["--class-column", request.class_column]
    if request.min_purity is not None:
        args += ["--min-purity", str(request.min_purity)]
    if request.overwrite:
        args.append("--overwrite")
    return args


def run_search(
    prefix: List[str],
    request: SearchRequest,
    on_progress: Callable[[float], None] = lambda fraction: None,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Run ``geobimors search`` (a single streamed pass: no progress events)."""
    return run_command(prefix, build_search_args(request), request.output, on_progress, is_cancelled)


def write_points_geojson(points: Iterable[tuple], authid: str) -> str:
    """Write picked map points (x, y) in CRS ``authid`` to a temporary GeoJSON file; return its path.

    ``geobimors search --like FILE`` reprojects them to the store's CRS and takes the chips they fall in.
    """
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [float(x), float(y)]}}
        for x, y in points
    ]
    collection = {"type": "FeatureCollection", "features": features}
    if authid:
        collection["crs"] = {"type": "name", "properties": {"name": authid}}
    handle, path = tempfile.mkstemp(prefix="geobimors-examples-", suffix=".geojson")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        json.dump(collection, f)
    return path


def layer_path(source: str) -> str:
    """The file of a QGIS layer source (``file.gpkg|layername=x`` -> ``file.gpkg``)."""
    return source.split("|", 1)[0]


def run_assess(prefix: List[str], request: AssessRequest, timeout: float = 3600.0) -> RunResult:
    """Run ``geobimors assess``; the printed report is in ``RunResult.lines``."""
    try:
        done = subprocess.run(
            prefix + build_assess_args(request),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run {prefix[0]} ({exc}); " + INSTALL_HINT) from None
    result = RunResult(request.output, returncode=done.returncode, lines=done.stdout.splitlines())
    for line in done.stderr.splitlines():
        if line.startswith("Error:"):
            result.error = line[len("Error:") :].strip()
        elif line.startswith("Warning:"):
            result.warnings.append(line[len("Warning:") :].strip())
    if done.returncode != 0 and result.error is None:
        result.error = f"geobimors stopped with exit code {done.returncode}"
    return result
