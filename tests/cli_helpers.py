"""Running the CLI in-process and checking its one-line errors."""

from __future__ import annotations

from dataclasses import dataclass

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


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """The run failed with ``code`` and a single 'Error:' line mentioning every fragment."""
    assert result.exit_code == code, (result.exit_code, result.err)
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.err
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), (fragment, errors[0])
