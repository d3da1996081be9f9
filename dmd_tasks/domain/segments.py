"""How many SMS parts a message takes, and in which encoding.

A message that every character of fits the GSM 03.38 alphabet goes as GSM-7: 160 septets
in one part, 153 a part once split (the rest carries the concatenation header); a
character of the extension table (``€ [ ] { } | ^ ~ \\``) takes two septets (escape + code).
One character outside the alphabet turns the whole message into UCS-2: 70 UTF-16 code units
in one part, 67 a part once split (a character outside the BMP takes two units). A
character's units are never split across parts. The ``gsm0338`` codec (a maintained
implementation of the 3GPP tables) says which characters fit and how many septets each takes.

The provider meters its throughput in parts, so the send path and the scheduler count parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gsm0338  # noqa: F401  # registers the "gsm03.38" codec

GSM7 = "GSM-7"
UCS2 = "UCS-2"
#: (units in a single part, units a part when split)
_CAPACITY = {GSM7: (160, 153), UCS2: (70, 67)}


@dataclass(frozen=True)
class Segments:
    encoding: str  # GSM-7 | UCS-2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    parts: int


@lru_cache(maxsize=4096)
def _septets(char: str) -> int | None:
    """Septets of one character in GSM-7 (1, or 2 for the extension table), None if it has none."""
    try:
        return len(char.encode("gsm03.38"))
    except UnicodeError:
        return None


def _pack(units: list[int], encoding: str) -> int:
    single, split = _CAPACITY[encoding]
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for unit in units:
        if used + unit > split:
            parts, used = parts + 1, 0
        used += unit
    return parts


def measure(text: str) -> Segments:
    """The encoding, size and parts of ``text`` as one SMS (an empty text still takes one part)."""
    septets = [_septets(c) for c in text]
    if all(s is not None for s in septets):
        units = [s for s in septets if s is not None]
        return Segments(GSM7, sum(units), _pack(units, GSM7))
    units = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return Segments(UCS2, sum(units), _pack(units, UCS2))
