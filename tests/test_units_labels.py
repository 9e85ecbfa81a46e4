"""Lengths with units, the labels-file parser and label colours."""

from __future__ import annotations

from pathlib import Path

import pytest

from geobimors.errors import InputError
from geobimors.labels import Label, camel_to_words, parse_labels, read_labels
from geobimors.units import Length, parse_length
from geobimors.vector.style import label_colours


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("224", Length(224, "px")),
        ("224px", Length(224, "px")),
        (" 64 px ", Length(64, "px")),
        (32, Length(32, "px")),
        ("640m", Length(640, "m")),
        ("1.5km", Length(1500, "m")),
        ("100ft", Length(30.48, "m")),
    ],
)
def test_parse_length(text: str, expected: Length) -> None:
    got = parse_length(text)
    assert got.unit == expected.unit
    assert got.value == pytest.approx(expected.value)


@pytest.mark.parametrize("text", ["", "abc", "-5", "12.5px", "10 miles", "nan"])
def test_parse_length_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_length(text, "--chip-size")


def test_labels_comments_blank_lines_and_prompts() -> None:
    labels = parse_labels(["# comment", "", "forest", "  water :  a lake  or the sea ", "sea lake"])
    assert labels == [Label("forest", "forest"), Label("water", "a lake or the sea"), Label("sea lake", "sea lake")]


@pytest.mark.parametrize("lines", [["forest", "Forest"], ["sea lake", "sea   lake"], ["a", "b", " A "]])
def test_labels_duplicates_ignoring_case_and_space(lines: list[str]) -> None:
    with pytest.raises(InputError, match="duplicate label"):
        parse_labels(lines)


def test_read_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="no labels"):
        read_labels(empty)
    single = tmp_path / "single.txt"
    single.write_text("forest\n")
    with pytest.raises(InputError, match="single label"):
        read_labels(single)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("for\xeat\nfield\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_labels(latin1)


def test_camel_to_words() -> None:
    assert camel_to_words("SeaLake") == "sea lake"
    assert camel_to_words("HerbaceousVegetation") == "herbaceous vegetation"
    assert camel_to_words("annual_crop") == "annual crop"
    assert camel_to_words("RGBImage") == "rgb image"


def test_label_colours_are_distinct_and_natural() -> None:
    labels = ["river", "sea or lake", "forest", "residential buildings", "thing one", "thing two"]
    colours = label_colours(labels)
    assert len(set(colours.values())) == len(labels)
    for water in ("river", "sea or lake"):  # water reads as blue: blue channel dominates
        red, green, blue = (int(colours[water][i : i + 2], 16) for i in (1, 3, 5))
        assert blue > red and blue > green
    red, green, blue = (int(colours["forest"][i : i + 2], 16) for i in (1, 3, 5))
    assert green > red and green > blue
