"""Lengths given in pixels or ground units (``224``, ``224px``, ``640m``, ``1.5km``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from geobimors.errors import InputError

_LENGTH_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|m|km|ft)?\s*$")
_METRES_PER_UNIT = {"m": 1.0, "km": 1000.0, "ft": 0.3048}
# Mean metres per degree of latitude; a degree of longitude is this times cos(latitude).
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class Length:
    """A length in pixels (``unit == "px"``) or in metres (``unit == "m"``).

    Attributes:
        value: the number, in pixels or metres.
        unit: ``"px"`` or ``"m"``.
    """

    value: float
    unit: str

    @property
    def is_ground(self) -> bool:
        """True when the length is in ground units (metres)."""
        return self.unit == "m"

    def __str__(self) -> str:
        if self.unit == "px":
            return f"{self.value:g} px"
        return f"{self.value:g} m"


def parse_length(text: str | int | float, option: str = "length") -> Length:
    """Parse a length such as ``224``, ``224px``, ``640m``, ``1.5km`` or ``100ft``.

    A bare number means pixels. Ground units are converted to metres.

    Args:
        text: the text to parse (numbers are taken as pixels).
        option: name of the option, used in error messages.

    Returns:
        The parsed length.

    Raises:
        InputError: if the text is not a non-negative length.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "px"
    else:
        match = _LENGTH_RE.match(str(text))
        if match is None:
            raise InputError(
                f"{option} {text!r} is not a length; use pixels (224, 224px) or ground units (640m, 1.5km, 100ft)"
            )
        value = float(match.group(1))
        unit = match.group(2) or "px"
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{option} {text!r} must be a non-negative length")
    if unit == "px":
        if value != int(value):
            raise InputError(f"{option} {text!r}: a length in pixels must be a whole number")
        return Length(value, "px")
    return Length(value * _METRES_PER_UNIT[unit], "m")
