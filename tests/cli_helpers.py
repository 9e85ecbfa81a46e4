"""Running the CLI in-process and checking its one-line errors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from geobimors.cli import main


@dataclass
class CliResult:
    exit_code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """Run ``geobimors ARGS`` in this process; return exit code, stdout and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    code = info.value.code
    return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)


def run_command_in_process(capsys: pytest.CaptureFixture[str], command: list[str]) -> CliResult:
    """Run a ``python -m geobimors.cli ARGS`` command line in this process, with one torch thread.

    What the tests' ``OMP_NUM_THREADS=1`` subprocess of the same command writes, byte for byte,
    without its start (about 5 s of CPU for torch and open_clip's imports): for the clean
    reference runs that resumed runs are compared with.
    """
    import torch

    assert command[1:3] == ["-m", "geobimors.cli"], command
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cli(capsys, *command[3:])
    finally:
        torch.set_num_threads(threads)


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """The run failed with ``code`` and a single 'Error:' line mentioning every fragment."""
    assert result.exit_code == code, (result.exit_code, result.err)
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.err
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), (fragment, errors[0])


def wait_for_parts(parts: Path, count: int, running: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait until a run has stored ``count`` batches (or stopped); assert it is still running."""
    deadline = time.monotonic() + timeout
    while len(list(parts.glob("batch-*.parquet"))) < count and running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running(), "the run finished before it could be interrupted"


def throttled(command: list[str], fast: int, delay: float) -> list[str]:
    """``command`` (a console-script or ``-m geobimors.cli`` command) with every chip read after
    the first ``fast`` batches held back ``delay`` seconds (``tests/throttled_cli.py``): a run that
    a test can interrupt after ``fast`` stored batches, however loaded the machine."""
    start = 3 if command[1:3] == ["-m", "geobimors.cli"] else 1
    script = str(Path(__file__).with_name("throttled_cli.py"))
    return [sys.executable, script, str(fast), str(delay), *command[start:]]


def map_command(scene: Path, labels: Path | str, model: str, out: Path) -> list[str]:
    """The console-script command of a 16 px chip run (for runs in a subprocess)."""
    exe = str(Path(sys.executable).with_name("geobimors"))
    return [
        exe,
        "map",
        str(scene),
        "-l",
        str(labels),
        "-m",
        model,
        "--chip-size",
        "16",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "-o",
        str(out),
        "-q",
    ]
