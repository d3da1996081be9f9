"""SMS parts counted exactly: GSM-7 (extension characters count double) or UCS-2, single and split limits."""

from __future__ import annotations

import pytest

from dmd_tasks.domain.segments import GSM7, UCS2, Segments, measure


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        ("", GSM7, 0, 1),
        ("a" * 160, GSM7, 160, 1),
        ("a" * 161, GSM7, 161, 2),
        ("a" * 306, GSM7, 306, 2),
        ("a" * 307, GSM7, 307, 3),
        ("a" * 918, GSM7, 918, 6),
        ("€" * 80, GSM7, 160, 1),  # extension table: escape + code, two septets each
        ("€" * 81, GSM7, 162, 2),
        ("a" * 152 + "€", GSM7, 154, 1),
        ("a" * 152 + "€" + "a" * 10, GSM7, 164, 2),  # the escape pair is not split: 152 | 2 + 10
        ("Café £5 @ Zürich: ÄÖÑÜ§¿äöñüà", GSM7, 29, 1),  # the basic table's accented letters
        ("Hi [team] {x} ~|^\\", GSM7, 26, 1),  # 18 characters, 8 of them from the extension table
        ("ç", UCS2, 1, 1),  # not in the GSM alphabet: the whole message goes UCS-2
        ("a" * 69 + "ç", UCS2, 70, 1),
        ("a" * 70 + "ç", UCS2, 71, 2),
        ("a" * 134, GSM7, 134, 1),
        ("😀" * 35, UCS2, 70, 1),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, UCS2, 72, 2),
        ("a" * 66 + "😀" + "a" * 60, UCS2, 128, 2),  # the surrogate pair is not split: 66 | 2 + 60
        ("ü" * 67 + "ç" * 68, UCS2, 135, 3),
    ],
)
def test_parts_and_encoding(text: str, encoding: str, units: int, parts: int) -> None:
    assert measure(text) == Segments(encoding, units, parts)
