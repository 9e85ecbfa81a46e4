"""Commands that write reports or files besides maps (evaluate, caption, train, assess): their
outputs and numeric options are checked before any slow work, and nothing is overwritten."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from geobimors.cli import _setup_messages
from geobimors.errors import InputError
from geobimors.train.loop import TrainSettings

from cli_helpers import assert_one_line_error, run_cli


def test_evaluate_reports_are_never_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "images"  # never read: the checks come first
    kept = tmp_path / "report.json"
    kept.write_text("keep")
    result = run_cli(capsys, "evaluate", data, "--json", kept)
    assert_one_line_error(result, 2, "already exists", "--overwrite")
    assert kept.read_text() == "keep"
    (tmp_path / "m.csv").write_text("keep")
    result = run_cli(capsys, "evaluate", data, "--confusion", tmp_path / "m.csv")
    assert_one_line_error(result, 2, "already exists")
    assert (tmp_path / "m.csv").read_text() == "keep"
    (tmp_path / "folder.json").mkdir()
    assert_one_line_error(run_cli(capsys, "evaluate", data, "--json", tmp_path / "folder.json"), 2, "is a directory")
    missing = tmp_path / "no" / "r.json"
    assert_one_line_error(run_cli(capsys, "evaluate", data, "--json", missing), 2, "does not exist")
    same = tmp_path / "same.csv"
    assert_one_line_error(run_cli(capsys, "evaluate", data, "--json", same, "--confusion", same), 2, "same file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "m.csv", "report.json"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["evaluate", "DATA", "--batch-size", "0"], ("--batch-size must be at least 1",)),
        (["evaluate", "DATA", "--limit-per-class", "0"], ("--limit-per-class must be at least 1",)),
        (["caption", "DATA", "--captioner", "mini", "--batch-size", "0"], ("--batch-size must be at least 1",)),
        (["caption", "DATA", "--captioner", "mini", "-o", "no/c.csv"], ("no", "does not exist")),
        (["train", "DATA", "-o", "no/h.safetensors"], ("does not exist",)),
        (["train", "DATA", "-o", "h.safetensors", "--lr", "nan"], ("--lr", "not a finite number")),
        (["train", "DATA", "-o", "h.safetensors", "--epochs", "0"], ("epochs", "at least 1")),
        (["train", "DATA", "-o", "h.safetensors", "--lr", "0"], ("lr must be a finite number above 0",)),
        (["evaluate", "DATA", "--view-blend", "inf"], ("--view-blend", "not a finite number")),
    ],
)
def test_bad_numbers_and_paths_fail_first(
    args: list[str], fragments: tuple[str, ...], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [str(tmp_path / a) if a in ("DATA", "no/c.csv", "no/h.safetensors", "h.safetensors") else a for a in args]
    before = set(tmp_path.iterdir())
    assert_one_line_error(run_cli(capsys, *args), 2, *fragments)
    assert set(tmp_path.iterdir()) == before


def test_train_settings_refuse_non_finite_numbers() -> None:
    with pytest.raises(InputError, match="lr must be a finite number above 0"):
        TrainSettings(lr=float("nan"))
    with pytest.raises(InputError, match="weight_decay"):
        TrainSettings(weight_decay=float("inf"))
    with pytest.raises(InputError, match="at least 1"):
        TrainSettings(epochs=0)
    assert TrainSettings(lr=0.1, weight_decay=0.0).lr == 0.1


def test_library_logs_stay_quiet_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip logs 'Failed to download weights' on the root logger before raising; geobimors prints its own
    one-line error, so without --debug the library's line must not appear."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    for name in ("open_clip", "transformers", "huggingface_hub", "rasterio", "distributed"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    _setup_messages(debug=False)
    assert not root.isEnabledFor(logging.ERROR)
    assert not logging.getLogger("huggingface_hub.utils._http").isEnabledFor(logging.WARNING)
    assert os.environ["HF_HUB_VERBOSITY"] == "error"


def test_labelling_an_empty_store_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A store of a scene without valid pixels has no rows: labelling it says so (no broken GeoPackage)."""
    import numpy as np

    from rasters import make_geotiff

    scene = make_geotiff(tmp_path / "nan.tif", np.full((3, 64, 64), np.nan, dtype=np.float32))
    store = tmp_path / "e.parquet"
    assert run_cli(capsys, "embed", scene, "-o", store, "-q").exit_code == 0
    labels = tmp_path / "labels.txt"
    labels.write_text("forest\nwater\n")
    result = run_cli(capsys, "map", "--from-embeddings", store, "-l", labels, "-o", tmp_path / "out.gpkg")
    assert_one_line_error(result, 2, "holds no chips", "nothing to label")
    assert not (tmp_path / "out.gpkg").exists() and not list(tmp_path.glob("*.tmp"))


def test_an_interrupted_command_says_what_it_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only map, embed and caption keep finished work to resume; train (like evaluate, search) starts over."""
    import geobimors.train.api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(geobimors.train.api, "train", interrupted)
    result = run_cli(capsys, "train", tmp_path / "images", "-o", tmp_path / "h.safetensors")
    assert result.exit_code == 130
    assert result.err.strip() == "Interrupted before the output was finished; run the command again to start over."
    assert not (tmp_path / "h.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["map", "--bogus"], "Error: No such option '--bogus'.", "(see 'geobimors map --help')"),
        (["mpa"], "Error: No such command 'mpa'. Did you mean 'map'?", "(see 'geobimors --help')"),
        (["map", "x.tif", "--tta", "3"], "Error: Invalid value for '--tta'", "(see 'geobimors map --help')"),
    ],
)
def test_usage_errors_are_one_line_with_where_to_look(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str, hint: str
) -> None:
    """A mistyped option or command gets one 'Error:' line naming the help to read, not click's usage block;
    a bare ``geobimors`` still prints its help."""
    result = run_cli(capsys, *args)
    assert result.exit_code == 2 and result.out == ""
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert result.err.startswith(message) and result.err.rstrip().endswith(hint)
    bare = run_cli(capsys)
    assert "Usage: geobimors" in bare.out + bare.err and "Commands:" in bare.out + bare.err


def test_the_python_api_checks_counts_before_any_work(tmp_path: Path) -> None:
    """The checks the CLI makes are the API's too: a notebook call with batch_size=0 or limit_per_class=0 is
    refused by name before any file is read or model loaded (the paths here do not exist)."""
    from geobimors.run.caption import caption_source
    from geobimors.train.api import evaluate_data
    from geobimors.train.retrieval import evaluate_retrieval

    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="--batch-size must be at least 1, got 0"):
        evaluate_data(missing, batch_size=0)
    with pytest.raises(InputError, match="--limit-per-class must be at least 1, got -2"):
        evaluate_data(missing, limit_per_class=-2)
    with pytest.raises(InputError, match="--batch-size must be at least 1, got 0"):
        evaluate_retrieval(missing / "captions.jsonl", batch_size=0)
    with pytest.raises(InputError, match="--batch-size must be at least 1, got -1"):
        caption_source(missing, None, "mini", {}, batch_size=-1)  # type: ignore[arg-type]
