"""Class labels for classification: the labels file and its parser.

A labels file has one label per line. Blank lines and lines starting with ``#``
are ignored. A line ``label: prompt text`` names the class ``label`` (what the
output says) and describes it with ``prompt text`` (what the text encoder
reads). A line without a colon uses the label itself as prompt text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from geobimors.errors import InputError


@dataclass(frozen=True)
class Label:
    """A class: the name written to outputs and the text the model reads.

    Attributes:
        name: the label as it appears in outputs.
        prompt: the class description substituted into prompt templates.
    """

    name: str
    prompt: str


def normalise_label(name: str) -> str:
    """Return the comparison key of a label: case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def camel_to_words(name: str) -> str:
    """Turn a folder-style class name into label text (``SeaLake`` -> ``sea lake``).

    CamelCase boundaries, underscores and hyphens become spaces; the result is
    lower case.
    """
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(re.split(r"[_\-\s]+", spaced)).strip().lower()


def parse_labels(lines: Iterable[str], source: str = "labels") -> list[Label]:
    """Parse labels from lines of text.

    Args:
        lines: lines of a labels file (with or without newlines).
        source: where the lines come from, for error messages.

    Returns:
        The labels in file order.

    Raises:
        InputError: on an empty label or a duplicate (ignoring case and spaces).
    """
    labels: list[Label] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, prompt = line.partition(":")
        name = " ".join(name.split())
        prompt = " ".join(prompt.split()) if sep else name
        if not name:
            raise InputError(f"{source} line {number}: empty label before ':'; write 'label: prompt text'")
        if not prompt:
            raise InputError(f"{source} line {number}: empty prompt text after ':' for label {name!r}")
        key = normalise_label(name)
        if key in seen:
            raise InputError(
                f"{source} line {number}: duplicate label {name!r} (same as line {seen[key]}, "
                "ignoring case and spaces); remove one of them"
            )
        seen[key] = number
        labels.append(Label(name=name, prompt=prompt))
    return labels


def check_labels(labels: Sequence[Label], source: str = "labels") -> list[Label]:
    """Check that there are at least two labels to choose between.

    Raises:
        InputError: if there are fewer than two labels.
    """
    if not labels:
        raise InputError(f"{source} has no labels; write one label per line ('#' starts a comment)")
    if len(labels) == 1:
        raise InputError(
            f"{source} has a single label ({labels[0].name!r}); classification needs at least two, "
            "e.g. add the classes it should be told apart from"
        )
    return list(labels)


def read_labels(path: str | Path) -> list[Label]:
    """Read and check a labels file.

    Args:
        path: path of the labels file (UTF-8).

    Returns:
        At least two labels, without duplicates.

    Raises:
        InputError: if the file is missing, unreadable, not UTF-8, or has
            fewer than two or duplicate labels.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"labels file not found: {path}; pass --labels FILE with one label per line") from None
    except IsADirectoryError:
        raise InputError(f"labels file {path} is a directory; pass a text file with one label per line") from None
    except PermissionError:
        raise InputError(f"labels file {path} is not readable; check its permissions") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"labels file {path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None
    return check_labels(parse_labels(text.splitlines(), source=f"labels file {path}"), f"labels file {path}")


def labels_from_names(names: Sequence[str]) -> list[Label]:
    """Build labels from plain names (API use), with the same checks as a file."""
    return check_labels(parse_labels([str(n).replace("\n", " ") for n in names]), "labels")
