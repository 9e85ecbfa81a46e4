"""Errors that geobimors reports to users.

Every error a user can cause or fix carries a one-line message that names the
problem and how to fix it. The CLI prints that line (no traceback unless
``--debug``) and exits with :attr:`GeobimorsError.exit_code`.
"""

from __future__ import annotations


class GeobimorsError(Exception):
    """Base class of errors with a user-facing one-line message.

    Attributes:
        exit_code: process exit status the CLI uses for this error.
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line, always: multi-line messages break log scrapers and QGIS' message bar.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        """The one-line message."""
        return str(self.args[0])


class InputError(GeobimorsError):
    """Bad input or usage: a file, option or argument that cannot be used (exit 2)."""

    exit_code = 2


class ModelError(InputError):
    """A model, checkpoint or head that cannot be found, obtained or loaded (exit 2)."""


class OutputError(InputError):
    """An output path that cannot be written, or exists without ``--overwrite`` (exit 2)."""


class RunError(GeobimorsError):
    """A failure while running (disk full, worker lost, ...) (exit 1)."""

    exit_code = 1


class GeobimorsWarning(UserWarning):
    """Something the user should know that does not stop the run (one line in the CLI)."""


def check_at_least_one(value: int | None, option: str) -> None:
    """Refuse a count below 1 (``--batch-size 0``, ``--limit-per-class -1``); ``None`` means unset.

    Raises:
        InputError: naming the option and the value.
    """
    if value is not None and value < 1:
        raise InputError(f"{option} must be at least 1, got {value}")


def warn(message: str) -> None:
    """Issue a :class:`GeobimorsWarning` with a one-line message."""
    import warnings

    warnings.warn(" ".join(message.split()), GeobimorsWarning, stacklevel=3)
