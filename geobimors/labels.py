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

# Bounds of a labels file: a label is a few words (CLIP reads at most 77 tokens of a prompt),
# so a line of thousands of characters or a file of megabytes is the wrong file.
MAX_LABELS_FILE_BYTES = 4 * 1024 * 1024
MAX_LABEL_LINE_CHARS = 1000
# How much of a label summaries print.
SHORT_LABEL_CHARS = 40
# Bidirectional controls can make a label display as something else (Trojan Source, CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


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
    """Return the comparison key of a label: NFKC, invisible characters removed, case-folded, whitespace collapsed.

    Invisible characters are format characters (Unicode category Cf: zero-width
    spaces and joiners, bidi controls, soft hyphens, the BOM, ...), so labels
    that differ only by them compare equal.
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.casefold().split())


def short_label(name: str, limit: int = SHORT_LABEL_CHARS) -> str:
    """A label shortened for summaries and messages (``...`` marks the cut)."""
    return name if len(name) <= limit else name[: limit - 3].rstrip() + "..."


def _check_characters(line: str, number: int, source: str) -> None:
    """Refuse control characters (terminal escapes) and bidi controls in a label line."""
    for ch in line:
        if ch in _BIDI_CONTROLS:
            raise InputError(
                f"{source} line {number}: bidirectional control character U+{ord(ch):04X} can make a label "
                "display as something else; remove it"
            )
        if unicodedata.category(ch) == "Cc" and ch != "\t":
            raise InputError(
                f"{source} line {number}: control character U+{ord(ch):04X} in a label; remove it "
                "(is this a text file?)"
            )


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
        if len(line) > MAX_LABEL_LINE_CHARS:
            raise InputError(
                f"{source} line {number} is {len(line):,} characters long; a label is a few words (the text "
                f"encoder reads at most 77 tokens), so lines over {MAX_LABEL_LINE_CHARS} characters are refused"
            )
        _check_characters(line.rstrip("\r\n"), number, source)
        name, sep, prompt = line.partition(":")
        name = " ".join(name.split())
        prompt = " ".join(prompt.split()) if sep else name
        if not name:
            raise InputError(f"{source} line {number}: empty label before ':'; write 'label: prompt text'")
        if not prompt:
            raise InputError(f"{source} line {number}: empty prompt text after ':' for label {name!r}")
        key = normalise_label(name)
        if not key:
            raise InputError(
                f"{source} line {number}: label {name!r} is empty once invisible characters are removed; "
                "write a visible label or delete the line"
            )
        if not normalise_label(prompt):
            raise InputError(f"{source} line {number}: the prompt text of label {name!r} is only invisible characters")
        if key in seen:
            raise InputError(
                f"{source} line {number}: duplicate label {name!r} (same as line {seen[key]}, "
                "ignoring case, spaces and invisible characters); remove one of them"
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
    from geobimors.files import read_regular_file

    path = Path(path)
    try:
        data = read_regular_file(path, "labels file", MAX_LABELS_FILE_BYTES)
        nul = data.find(b"\0")
        if nul >= 0:
            raise InputError(
                f"labels file {path} is binary (NUL byte at offset {nul}); pass a text file with one label per line"
            )
        text = data.decode("utf-8-sig")
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
