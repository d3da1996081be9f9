"""The codec: DynamoDB's wire form of items, and the string forms of times and leases (no network)."""

from __future__ import annotations

import calendar
import time
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary

from dmd_tasks.store.codec import deserialize, epoch_key, iso, new_lease, serialize


def test_strings_and_integers_take_the_direct_wire_form() -> None:
    assert serialize({"s": "x", "empty": "", "n": 42, "neg": -7, "zero": 0}) == {
        "s": {"S": "x"},
        "empty": {"S": ""},
        "n": {"N": "42"},
        "neg": {"N": "-7"},
        "zero": {"N": "0"},
    }


def test_booleans_stay_booleans_and_are_not_numbers() -> None:
    # bool is a subclass of int: it must not take the integer short cut
    assert serialize({"yes": True, "no": False}) == {"yes": {"BOOL": True}, "no": {"BOOL": False}}
    back = deserialize(serialize({"yes": True, "no": False}))
    assert back["yes"] is True and back["no"] is False


def test_numbers_come_back_as_decimals_like_boto3_gives_them() -> None:
    back = deserialize(serialize({"n": 42, "d": Decimal("1.25"), "big": 10**30}))
    assert back == {"n": Decimal(42), "d": Decimal("1.25"), "big": Decimal(10**30)}
    assert all(type(v) is Decimal for v in back.values())


def test_floats_are_refused_as_boto3_refuses_them() -> None:
    with pytest.raises(TypeError):
        serialize({"f": 1.5})


def test_a_full_item_round_trips() -> None:
    # Given an item with every kind of value the table may hold
    item: dict[str, Any] = {
        "pk": "SALE#s1",
        "n": 3,
        "d": Decimal("0.5"),
        "flag": True,
        "none": None,
        "tags": {"a", "b"},
        "nums": {Decimal(1), Decimal(2)},
        "blob": b"\x00\x01\xff",
        "blobs": {b"x", b"y"},
        "list": ["a", 1, {"inner": [True, None]}],
        "map": {"outer": {"inner": "v", "n": 7, "deeper": {"s": {"z"}}}},
    }
    # When it goes to the wire form and back
    wire = serialize(item)
    back = deserialize(wire)
    # Then every value is what was written (numbers as Decimals, binaries as boto3's Binary)
    assert sorted(wire["tags"]["SS"]) == ["a", "b"]
    assert wire["blob"] == {"B": b"\x00\x01\xff"}
    assert wire["map"]["M"]["outer"]["M"]["n"] == {"N": "7"}
    assert back == item
    assert isinstance(back["blob"], Binary) and back["blob"].value == b"\x00\x01\xff"  # type: ignore[attr-defined]
    assert back["map"]["outer"]["n"] == Decimal(7) and type(back["map"]["outer"]["n"]) is Decimal


def test_deserialize_reads_a_stream_image_as_dynamodb_sends_it() -> None:
    image = {"pk": {"S": "EVENT#e"}, "attempts": {"N": "2"}, "ok": {"BOOL": False}, "gone": {"NULL": True}}
    assert deserialize(image) == {"pk": "EVENT#e", "attempts": Decimal(2), "ok": False, "gone": None}


def test_iso_is_utc_with_second_precision() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1_795_600_800.9) == "2026-11-25T10:00:00Z"
    assert calendar.timegm(time.strptime(iso(1_700_000_000), "%Y-%m-%dT%H:%M:%SZ")) == 1_700_000_000


def test_iso_strings_sort_in_time_order() -> None:
    times = [0, 59, 60, 3599, 86_400, 1_000_000_000, 1_795_600_800, 4_102_444_800]
    assert sorted(iso(t) for t in reversed(times)) == [iso(t) for t in times]


def test_epoch_key_is_twelve_digits_and_sorts_in_time_order() -> None:
    assert epoch_key(0) == "000000000000"
    assert epoch_key(1_795_600_800.99) == "001795600800"
    times = [0, 9, 10, 99, 100, 999_999_999, 1_000_000_000, 1_795_600_800]
    keys = [epoch_key(t) for t in times]
    assert all(len(k) == 12 for k in keys)
    assert sorted(reversed(keys)) == keys


def test_a_lease_starts_with_its_expiry_and_carries_a_token() -> None:
    lease = new_lease(1_795_600_800, 60)
    expiry, sep, token = lease.partition("#")
    assert expiry == iso(1_795_600_860)
    assert sep == "#"
    assert len(token) == 12 and all(c in "0123456789abcdef" for c in token)


def test_leases_taken_in_the_same_second_differ() -> None:
    leases = {new_lease(1_795_600_800, 60) for _ in range(1000)}
    assert len(leases) == 1000


def test_leases_sort_by_expiry_and_against_iso_times() -> None:
    now = 1_795_600_800
    earlier, later = new_lease(now, 30), new_lease(now, 31)
    assert earlier < later
    # a lease is expired once ``iso(now)`` sorts after it: not before its expiry second, yes after it
    assert not new_lease(now, 60) <= iso(now + 59)
    assert new_lease(now, 60) <= iso(now + 61)
