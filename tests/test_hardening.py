"""The catalogue of bad inputs and faults (docs/errors.md): each tried, with its exact behaviour.

Every case runs ``geobimors`` and checks the exit code (2: usage/input, 1: runtime
failure, 0: handled with a warning), the one-line message (what is wrong and the
fix), no traceback, and that no output or partial file is left behind (unless the
case leaves a resumable store on purpose).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from geobimors.errors import InputError, ModelError
from geobimors.labels import parse_labels

from cli_helpers import CliResult, assert_one_line_error, map_command, run_cli, throttled, wait_for_parts
from rasters import make_geotiff, random_rgb


@dataclass
class Case:
    """One catalogue entry: how to build the inputs and what must happen."""

    name: str
    build: Callable[[Path, str], list[str]]  # (tmp dir, tiny model) -> CLI arguments after "map"
    code: int
    fragments: tuple[str, ...]
    output_expected: bool = False  # the run writes its output (handled input)
    check: Callable[[Path, CliResult], None] | None = None
    extra: dict = field(default_factory=dict)


def scene(tmp: Path, data: np.ndarray | None = None, name: str = "scene.tif", **kw: object) -> str:
    return str(make_geotiff(tmp / name, random_rgb(64, 64) if data is None else data, **kw))


def labels(tmp: Path, text: str | bytes = "forest\nwater\nfields\n", name: str = "labels.txt") -> str:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def base(tmp: Path, model: str, **over: str) -> list[str]:
    """CLI arguments of a good run, with some replaced (defaults are made only when not replaced)."""
    chosen_scene = over.pop("scene") if "scene" in over else scene(tmp, name="default.tif")
    opts = {"-m": model, "--chip-size": "16", "-o": str(tmp / "out.gpkg")}
    if "-l" not in over:
        opts["-l"] = labels(tmp, name="default-labels.txt")
    opts.update(over)
    args = [chosen_scene]
    for key, value in opts.items():
        args += [key, value]
    return args


def truncated_tiff(tmp: Path) -> str:
    full = Path(scene(tmp, random_rgb(256, 256), name="full.tif", tiled=True, blockxsize=64, blockysize=64))
    bad = tmp / "truncated.tif"
    bad.write_bytes(full.read_bytes()[:300])
    return str(bad)


def data_truncated_tiff(tmp: Path) -> str:
    """A GeoTIFF whose header is whole but whose pixels were cut off: it opens, and every read fails."""
    full = Path(scene(tmp, random_rgb(64, 64), name="whole.tif"))
    bad = tmp / "cut.tif"
    bad.write_bytes(full.read_bytes()[:1000])
    full.unlink()
    return str(bad)


def plain_png(tmp: Path) -> str:
    path = tmp / "photo.png"
    Image.fromarray(random_rgb(64, 64).transpose(1, 2, 0)).save(path)
    return str(path)


def with_nodata_out_of_range(tmp: Path) -> str:
    path = Path(scene(tmp))
    with rasterio.open(path, "r+") as ds:  # GDAL accepts and stores it; no pixel can equal it
        ds.nodata = -9999
    return str(path)


def float_with_nan_inf(tmp: Path) -> str:
    data = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32) * 1000
    data[:, :32, :32] = np.nan
    data[0, 40:, 40:] = np.inf
    data[1, 40:, 40:] = -np.inf
    return scene(tmp, data, name="float.tif")


def rgba(tmp: Path) -> str:
    data = np.concatenate([random_rgb(64, 64), np.full((1, 64, 64), 255, np.uint8)])
    data[3, :32, :32] = 0  # a transparent quadrant: its 4 chips are skipped
    return scene(tmp, data, name="rgba.tif")


def rotated(tmp: Path) -> str:
    t = Affine.translation(500_000, 5_000_000) @ Affine.rotation(20) @ Affine.shear(5, 0) @ Affine.scale(10, -10)
    return scene(tmp, transform=t, name="rotated.tif")


def geographic(tmp: Path) -> str:
    return scene(tmp, transform=Affine(0.0001, 0, 10.0, 0, -0.0001, 45.0), crs="EPSG:4326", name="wgs84.tif")


def evil_checkpoint(tmp: Path) -> str:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (tmp / "code-ran",))

    path = tmp / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    return f"ViT-B-32:{path}"


def truncated_weights(tmp: Path, model: str) -> str:
    weights = Path(model) / "open_clip_model.safetensors"
    folder = tmp / "broken-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((Path(model) / "open_clip_config.json").read_text())
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes()[:4096])
    return str(folder)


def head_for_other_clip(tmp: Path, model: str) -> str:
    from geobimors.heads.checkpoint import build_head, save_head
    from geobimors.labels import Label
    from geobimors.models.clip import load_model

    from tiny_models import make_tiny_clip_dir

    other = load_model(str(make_tiny_clip_dir(tmp / "other", seed=5)), device="cpu")
    return str(save_head(build_head("coop", other, [Label("a", "a"), Label("b", "b")]), tmp / "other.safetensors"))


def head_without_metadata(tmp: Path) -> str:
    import torch

    path = tmp / "bare.safetensors"
    save_file({"ctx": torch.zeros(4, 32)}, str(path))
    return str(path)


MOUNTS: list[Path] = []


@pytest.fixture(autouse=True)
def quick_dask_connect() -> Iterator[None]:
    """An unreachable scheduler is given up after 3 s here, not Dask's default 30 s."""
    import dask
    import distributed  # noqa: F401  (its defaults must be in dask's config first: leaving the set would drop them)

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        yield


@pytest.fixture(autouse=True)
def unmount() -> Iterator[None]:
    yield
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], capture_output=True)


def read_only_dir(tmp: Path) -> str:
    target = tmp / "ro"
    target.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: only a read-only file system refuses it
        mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)]
        if subprocess.run(mount, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a read-only file system here")
        MOUNTS.append(target)
    else:
        target.chmod(0o555)
    return str(target / "out.gpkg")


def no_files_left(tmp: Path, before: set[str]) -> None:
    left = {p.name for p in tmp.iterdir()} - before
    assert not {n for n in left if n.endswith((".gpkg", ".tmp", ".partial", ".lock"))}, left


def all_nodata_check(tmp: Path, result: CliResult) -> None:
    chips = gpd.read_file(tmp / "out.gpkg", layer="chips")
    assert len(chips) == 0 and "0 classified, 16 skipped" in result.out


def nan_check(tmp: Path, result: CliResult) -> None:
    chips = gpd.read_file(tmp / "out.gpkg", layer="chips")
    assert len(chips) == 16 - 4 - 1  # the NaN quadrant (4 chips) and the +-inf chip are skipped


CASES = [
    # Rasters
    Case("missing scene", lambda t, m: base(t, m, scene=str(t / "nope.tif")), 2, ("scene not found",)),
    # A folder is a list of scenes (issue 17): one without rasters is refused.
    Case("scene is a folder without rasters", lambda t, m: base(t, m, scene=str(t)), 2, ("holds no rasters",)),
    Case("not a raster", lambda t, m: base(t, m, scene=labels(t, "hello", "notes.tif")), 2, ("not a raster",)),
    Case("truncated GeoTIFF", lambda t, m: base(t, m, scene=truncated_tiff(t)), 2, ("not a raster GDAL can read",)),
    Case(
        "every window unreadable",
        lambda t, m: base(t, m, scene=data_truncated_tiff(t)),
        1,
        ("no chip of", "could be read", "IReadBlock failed", "gdalinfo -checksum"),
    ),
    Case("PNG without georeferencing", lambda t, m: base(t, m, scene=plain_png(t)), 2, ("no CRS", "--allow-no-crs")),
    Case(
        "PNG with --allow-no-crs",
        lambda t, m: [*base(t, m, scene=plain_png(t)), "--allow-no-crs"],
        0,
        (),
        output_expected=True,
    ),
    Case(
        "1 x 1 raster",
        lambda t, m: base(t, m, scene=scene(t, random_rgb(1, 1), name="tiny.tif")),
        2,
        ("larger than scene", "--chip-size"),
    ),
    Case(
        "all-nodata scene",
        lambda t, m: base(t, m, scene=scene(t, np.zeros((3, 64, 64), np.uint8), nodata=0)),
        0,
        (),
        output_expected=True,
        extra={"warning": "no chip had enough valid pixels"},
        check=all_nodata_check,
    ),
    Case(
        "NaN and infinities",
        lambda t, m: base(t, m, scene=float_with_nan_inf(t)),
        0,
        (),
        output_expected=True,
        check=nan_check,
    ),
    Case(
        "nodata outside the dtype range",
        lambda t, m: base(t, m, scene=with_nodata_out_of_range(t)),
        0,
        (),
        output_expected=True,
    ),
    Case(
        "1 band without --bands",
        lambda t, m: base(t, m, scene=scene(t, random_rgb(64, 64)[:1], name="g.tif")),
        0,
        (),
        output_expected=True,
        extra={"warning": "single band"},
    ),
    Case(
        "2 bands without --bands",
        lambda t, m: base(t, m, scene=scene(t, random_rgb(64, 64)[:2], name="2b.tif")),
        2,
        ("2 bands", "--bands R,G,B"),
    ),
    Case(
        "4 bands (RGBA) without --bands",
        lambda t, m: base(t, m, scene=rgba(t)),
        0,
        (),
        output_expected=True,
        check=lambda t, r: None if "12 classified, 4 skipped" in r.out else pytest.fail(r.out),
    ),
    Case(
        "4 bands (R,G,B,NIR) without --bands",
        lambda t, m: base(
            t,
            m,
            scene=scene(
                t,
                np.concatenate([random_rgb(64, 64), random_rgb(64, 64)[:1]]),
                name="4b.tif",
                photometric="MINISBLACK",
            ),
        ),
        2,
        ("4 bands", "--bands"),
    ),
    Case(
        "6 bands without --bands",
        lambda t, m: base(t, m, scene=scene(t, np.concatenate([random_rgb(64, 64)] * 2), name="6b.tif")),
        2,
        ("6 bands", "--bands"),
    ),
    Case("band out of range", lambda t, m: base(t, m, **{"--bands": "3,2,9"}), 2, ("band 9 is out of range",)),
    Case("band 0", lambda t, m: base(t, m, **{"--bands": "0,1,2"}), 2, ("band 0 is out of range",)),
    Case("rotated and sheared transform", lambda t, m: base(t, m, scene=rotated(t)), 0, (), output_expected=True),
    Case(
        "EPSG:4326 with ground units",
        lambda t, m: base(t, m, scene=geographic(t), **{"--chip-size": "100m"}),
        0,
        (),
        output_expected=True,
        extra={"warning": "geographic CRS"},
    ),
    Case(
        "unreachable URL",
        lambda t, m: base(t, m, scene="http://127.0.0.1:9/scene.tif"),
        2,
        ("could not open", "check the URL"),
    ),
    # Labels
    Case("labels file missing", lambda t, m: base(t, m, **{"-l": str(t / "none.txt")}), 2, ("labels file not found",)),
    Case("labels file empty", lambda t, m: base(t, m, **{"-l": labels(t, "")}), 2, ("no labels",)),
    Case("only comments", lambda t, m: base(t, m, **{"-l": labels(t, "# a\n  # b\n\n")}), 2, ("no labels",)),
    Case(
        "duplicate labels",
        lambda t, m: base(t, m, **{"-l": labels(t, "forest\nwater\nforest\n")}),
        2,
        ("duplicate label", "line 3"),
    ),
    Case(
        "case/space duplicates",
        lambda t, m: base(t, m, **{"-l": labels(t, "Sea  Lake\nforest\nsea lake\n")}),
        2,
        ("duplicate label",),
    ),
    Case("a single label", lambda t, m: base(t, m, **{"-l": labels(t, "forest\n")}), 2, ("single label",)),
    Case(
        "thousands of labels",
        lambda t, m: base(t, m, **{"-l": labels(t, "".join(f"class {i}\n" for i in range(2000)))}),
        0,
        (),
        output_expected=True,
    ),
    Case(
        "non-UTF-8 labels",
        lambda t, m: base(t, m, **{"-l": labels(t, b"for\xeat\nwater\n")}),
        2,
        ("not UTF-8", "save it as UTF-8"),
    ),
    Case(
        "label longer than the context",
        lambda t, m: base(t, m, **{"-l": labels(t, "forest\n" + "very " * 100 + "long\n")}),
        0,
        (),
        output_expected=True,
        extra={"warning": "longer than"},
    ),
    Case(
        "empty prompt after colon",
        lambda t, m: base(t, m, **{"-l": labels(t, "forest:\nwater\n")}),
        2,
        ("empty prompt",),
    ),
    Case("labels path is a directory", lambda t, m: base(t, m, **{"-l": str(t)}), 2, ("is a directory",)),
    # Models and heads
    Case("unknown model", lambda t, m: base(t, m, **{"-m": "ViT-Z-99:openai"}), 2, ("unknown model",)),
    Case("architecture without weights", lambda t, m: base(t, m, **{"-m": "ViT-B-32"}), 2, ("needs weights",)),
    Case(
        "weights file truncated",
        lambda t, m: base(t, m, **{"-m": truncated_weights(t, m)}),
        2,
        ("could not load weights", "truncated or corrupt"),
    ),
    Case(
        "pickle that runs code",
        lambda t, m: base(t, m, **{"-m": evil_checkpoint(t)}),
        2,
        ("refusing to load",),
        check=lambda t, r: None if not (t / "code-ran").exists() else pytest.fail("code ran"),
    ),
    Case(
        "weights not downloadable",
        lambda t, m: base(t, m, **{"-m": "ViT-B-32:laion2b_s34b_b79k"}),
        2,
        ("could not obtain weights", "HF_HUB_OFFLINE"),
    ),
    Case(
        "head for another CLIP",
        lambda t, m: [*base(t, m), "--head", head_for_other_clip(t, m)],
        2,
        ("was trained for CLIP",),
    ),
    Case(
        "head without metadata",
        lambda t, m: [*base(t, m), "--head", head_without_metadata(t)],
        2,
        ("no geobimors metadata",),
    ),
    Case(
        "head file missing",
        lambda t, m: [*base(t, m), "--head", str(t / "none.safetensors")],
        2,
        ("head checkpoint not found",),
    ),
    Case("CUDA without a GPU", lambda t, m: [*base(t, m), "--device", "cuda"], 2, ("no CUDA GPU",)),
    Case("fp16 on CPU", lambda t, m: [*base(t, m), "--device", "cpu", "--precision", "fp16"], 2, ("fp16 needs",)),
    # Options
    Case("chip size 0", lambda t, m: base(t, m, **{"--chip-size": "0"}), 2, ("must be positive",)),
    Case("chip size not a length", lambda t, m: base(t, m, **{"--chip-size": "big"}), 2, ("not a length",)),
    Case("overlap not smaller than chip", lambda t, m: base(t, m, **{"--overlap": "16"}), 2, ("--overlap",)),
    Case("negative GSD", lambda t, m: base(t, m, **{"--gsd": "-5"}), 2, ("--gsd must be positive",)),
    Case("min-valid above 1", lambda t, m: base(t, m, **{"--min-valid": "2"}), 2, ("--min-valid",)),
    Case("batch size 0", lambda t, m: base(t, m, **{"--batch-size": "0"}), 2, ("--batch-size",)),
    Case("top-k 0", lambda t, m: base(t, m, **{"--top-k": "0"}), 2, ("--top-k",)),
    Case("NaN option", lambda t, m: base(t, m, **{"--min-valid": "nan"}), 2, ("--min-valid", "not a finite number")),
    Case("captions none", lambda t, m: [*base(t, m), "--captions", "none"], 2, ("--captions none writes no captions",)),
    Case("bad scale range", lambda t, m: base(t, m, **{"--scale-range": "9,1"}), 2, ("MAX must be greater",)),
    Case("bad percentiles", lambda t, m: base(t, m, **{"--percentiles": "98"}), 2, ("--percentiles",)),
    Case("no workers", lambda t, m: base(t, m, **{"--workers": "0"}), 2, ("--workers",)),
    Case(
        "unreachable scheduler",
        lambda t, m: base(t, m, **{"--scheduler": "tcp://127.0.0.1:9"}),
        2,
        ("cannot reach the Dask scheduler",),
    ),
    # Output
    Case(
        "output directory missing",
        lambda t, m: base(t, m, **{"-o": str(t / "no" / "out.gpkg")}),
        2,
        ("does not exist",),
    ),
    Case("output directory read-only", lambda t, m: base(t, m, **{"-o": read_only_dir(t)}), 2, ("not writable",)),
    Case(
        "output exists",
        lambda t, m: base(t, m, **{"-o": labels(t, "keep me", "exists.gpkg")}),
        2,
        ("already exists", "--overwrite"),
        check=lambda t, r: None if (t / "exists.gpkg").read_text() == "keep me" else pytest.fail("overwritten"),
    ),
    Case(
        "output is a directory",
        lambda t, m: base(t, m, **{"-o": str(t / "dir.gpkg")}) if ((t / "dir.gpkg").mkdir() or True) else [],
        2,
        ("is a directory",),
    ),
    Case("output not .gpkg", lambda t, m: base(t, m, **{"-o": str(t / "out.shp")}), 2, (".gpkg",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path) -> None:
    args = case.build(tmp_path, tiny_model)
    before = {p.name for p in tmp_path.iterdir()}
    result = run_cli(capsys, "map", *args)
    assert "Traceback" not in result.err
    assert result.exit_code == case.code, (result.exit_code, result.err)
    if case.code:
        assert_one_line_error(result, case.code, *case.fragments)
    if "warning" in case.extra:
        assert any(line.startswith("Warning:") and case.extra["warning"] in line for line in result.err.splitlines())
    out = tmp_path / "out.gpkg"
    if case.output_expected:
        assert out.exists()
    else:
        no_files_left(tmp_path, before)
    if case.check is not None:
        case.check(tmp_path, result)


def test_catalogue_is_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    missing = [case.name for case in CASES if f"| {case.name} |" not in text]
    assert not missing, missing
    assert len(CASES) >= 40


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[None]:
    """A size-limited tmpfs mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode(errors='replace').strip()}")
    try:
        yield
    finally:
        unmounted = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        assert unmounted.returncode == 0, f"a file is still open on the full disk: {unmounted.stderr}"


def limit_file_size(limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG (Python ignores SIGXFSZ)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def leftovers(directory: Path) -> list[str]:
    """Half-written files under ``directory``: temporary files and journals of unfinished writes."""
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if ".tmp" in p.name or p.name.endswith("-journal")
    )


PREVIOUS = b"the previous run's output, which a failed run must not touch\n" * 64


@pytest.mark.parametrize("space", ["small file system", "file size limit"])
def test_disk_full_while_writing(
    space: str, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    source = make_geotiff(tmp_path / "big.tif", random_rgb(256, 256))  # 1,024 chips of 8 px
    label_file = labels(tmp_path)
    full = tmp_path / "full"
    out = full / "out.gpkg"
    args = [source, "-l", label_file, "-m", tiny_model, "--chip-size", "8", "-o", out, "--overwrite"]
    if space == "small file system":  # a real 160 kB file system: the run's writes fill it
        with small_filesystem(full, "160k"):
            out.write_bytes(PREVIOUS)
            result = run_cli(capsys, "map", *args)
            assert result.exit_code == 1 and "Traceback" not in result.err
            errors = [line for line in result.err.splitlines() if line.startswith("Error:")]
            assert len(errors) == 1 and "disk full" in errors[0] and "run the same command" in errors[0], result.err
            assert out.read_bytes() == PREVIOUS
            assert not leftovers(full)
            assert not [p.name for p in full.iterdir() if p.name.endswith(".gpkg") and p != out]
    else:  # a real write that fails: the run may not write files over 64 kB (the GeoPackage is larger)
        full.mkdir()
        out.write_bytes(PREVIOUS)
        command = [*map_command(source, Path(label_file), tiny_model, out)[:-1], "--chip-size", "8", "--overwrite"]
        done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_file_size(64 * 1024))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and str(out) in errors[0], done.stderr
        # One line saying what happened and what to do, not GDAL's "Failed to commit transaction".
        assert "file-size limit (ulimit -f: 65,536 bytes); raise it (ulimit -f unlimited)" in errors[0], errors[0]
        assert out.read_bytes() == PREVIOUS
        assert not leftovers(full)
        assert not [p.name for p in full.iterdir() if p.name.endswith(".gpkg") and p != out]


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")]
)
def test_signals_leave_a_resumable_run(
    sig: int, code: int, word: str, capsys: pytest.CaptureFixture[str], tiny_model: str, tmp_path: Path
) -> None:
    source = make_geotiff(tmp_path / "big.tif", random_rgb(256, 256))
    out = tmp_path / "out.gpkg"
    args = map_command(source, labels(tmp_path), tiny_model, out)
    # Reads after the third batch wait 0.5 s: the run is still going when the signal lands.
    command = throttled(args, fast=3, delay=0.5)
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = Path(str(out) + ".partial")
    wait_for_parts(parts, 3, lambda: proc.poll() is None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and word in err and "Traceback" not in err, (proc.returncode, err)
    assert not out.exists() and parts.is_dir()
    done = run_cli(capsys, *args[1:])  # resumed in this process (a new start costs seconds)
    assert done.exit_code == 0 and out.exists() and not parts.exists()
    assert len(gpd.read_file(out, layer="chips")) == 16 * 16


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_labels_parser_fuzz(lines: list[str]) -> None:
    try:
        labels_ = parse_labels(lines)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    names = [label.name for label in labels_]
    assert all(name and name == " ".join(name.split()) and not name.startswith("#") for name in names)
    # No two labels the same ignoring case, spaces and Unicode compatibility forms.
    assert len({" ".join(unicodedata.normalize("NFKC", n).casefold().split()) for n in names}) == len(names)
    # One label per line that is neither blank nor a comment, in file order.
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    assert len(labels_) == len(entries)
    for label, entry in zip(labels_, entries):
        assert label.name == " ".join(entry.partition(":")[0].split())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Headers close to what geobimors writes, each field possibly wrong or missing.
HEADER_FIELDS = {
    "format": st.just("geobimors-head") | st.text(max_size=12),
    "format_version": st.sampled_from([0, 1, 2, -1, "1", None, 1.5, True]),
    "head": st.sampled_from(["coop", "cocoop", "bimors"]) | JSON_VALUES,
    "clip_model": st.text(max_size=10),
    "clip_fingerprint": st.text(max_size=10),
    "labels": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "prompt": st.text(max_size=8)}), max_size=3)
    | JSON_VALUES,
    "config": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
}
HEADERS = st.builds(
    lambda header, dropped: {k: v for k, v in header.items() if k not in dropped},
    st.fixed_dictionaries(HEADER_FIELDS),
    st.sets(st.sampled_from(sorted(HEADER_FIELDS)), max_size=2),
)
REQUIRED = ("head", "clip_model", "clip_fingerprint", "labels", "config")


def acceptable_header(document: object) -> bool:
    """What read_metadata must accept: a geobimors header with every field and a known format version."""
    if not isinstance(document, dict) or document.get("format") != "geobimors-head":
        return False
    version = document.get("format_version", 0)
    return all(k in document for k in REQUIRED) and type(version) in (int, bool) and version <= 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), JSON_VALUES.map(json.dumps), HEADERS.map(json.dumps)))
def test_checkpoint_metadata_fuzz(tmp_path_factory: pytest.TempPathFactory, metadata: str) -> None:
    import torch

    from geobimors.heads.checkpoint import FORMAT, checkpoint_labels, read_metadata
    from geobimors.labels import Label

    path = tmp_path_factory.mktemp("fuzz") / "head.safetensors"
    save_file({"ctx": torch.zeros(2, 2)}, str(path), metadata={FORMAT: metadata})
    try:
        document = json.loads(metadata)
    except ValueError:
        document = None
    try:
        parsed = read_metadata(path)
    except ModelError as exc:
        assert "\n" not in str(exc)
        assert not acceptable_header(document), exc
        return
    assert acceptable_header(document) and parsed == document
    labels = document["labels"]  # type: ignore[index]
    well_formed = (
        isinstance(labels, list)
        and bool(labels)
        and all(isinstance(i, dict) and {"name", "prompt"} <= set(i) for i in labels)
    )
    try:
        found = checkpoint_labels(parsed)
    except ModelError as exc:
        assert "\n" not in str(exc)
        assert not well_formed, exc
        return
    assert well_formed and found == [Label(str(i["name"]), str(i["prompt"])) for i in labels]
