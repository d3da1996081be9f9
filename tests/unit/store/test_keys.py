"""Every key and index string of the ``demand`` table (docs/data-model.md), and their inverses (no network)."""

from __future__ import annotations

import zlib

import pytest

from dmd_tasks.store import keys
from dmd_tasks.store.keys import (
    ACTIVE_SALES,
    GSI1,
    GSI2,
    MESSAGE_INDEX_SK,
    SALES_GENERATING,
    SALES_WAITING,
    demand_key,
    event_key,
    event_partition,
    fan_of,
    message_index,
    notification_key,
    optout_key,
    pending_index,
    pending_shard,
    pending_sort,
    phone_of,
    sale_key,
    sale_of,
    sale_partition,
    sending_index,
)


def test_item_keys_follow_the_documented_layout() -> None:
    assert event_partition("ev1") == "EVENT#ev1"
    assert sale_partition("s1") == "SALE#s1"
    assert event_key("ev1") == {"pk": "EVENT#ev1", "sk": "EVENT"}
    assert demand_key("ev1", "fan1") == {"pk": "EVENT#ev1", "sk": "DEMAND#fan1"}
    assert sale_key("s1") == {"pk": "SALE#s1", "sk": "SALE"}
    assert notification_key("s1", "fan1") == {"pk": "SALE#s1", "sk": "NOTIFICATION#fan1"}
    assert optout_key("+15550001234") == {"pk": "OPTOUT#+15550001234", "sk": "OPTOUT"}


def test_demand_lives_under_its_event_and_notifications_under_their_sale() -> None:
    assert demand_key("ev1", "f")["pk"] == event_key("ev1")["pk"]
    assert notification_key("s1", "f")["pk"] == sale_key("s1")["pk"]
    assert demand_key("ev1", "f")["sk"].startswith(keys.DEMAND_PREFIX)
    assert notification_key("s1", "f")["sk"].startswith(keys.NOTIFICATION_PREFIX)


def test_index_names_and_partitions_are_the_documented_strings() -> None:
    assert (GSI1, GSI2) == ("gsi1", "gsi2")
    assert (SALES_WAITING, SALES_GENERATING, ACTIVE_SALES) == ("SALES#waiting", "SALES#generating", "ACTIVE_SALES")
    assert MESSAGE_INDEX_SK == "NOTIFICATION"
    assert pending_index("s1", 3) == "PENDING#s1#3"
    assert sending_index("s1", 0) == "SENDING#s1#0"
    assert message_index("SM123") == "MSG#SM123"


def test_pending_sort_is_the_due_time_then_the_fan() -> None:
    assert pending_sort(1_795_600_800.7, "fan1") == "001795600800#fan1"


def test_pending_sort_orders_by_time_before_fan() -> None:
    # Given fans whose ids sort against their due times
    entries = [(1_795_600_900, "aaa"), (1_795_600_800, "zzz"), (999, "mmm"), (1_795_600_800, "bbb")]
    # Then sorting the sort keys sorts by due time, then fan id
    by_key = sorted(entries, key=lambda e: pending_sort(*e))
    assert by_key == [(999, "mmm"), (1_795_600_800, "bbb"), (1_795_600_800, "zzz"), (1_795_600_900, "aaa")]


@pytest.mark.parametrize("shards", [1, 2, 4, 7, 16])
def test_pending_shard_is_in_range_and_stable(shards: int) -> None:
    fans = [f"fan{i:05d}" for i in range(500)]
    placed = [pending_shard(f, shards) for f in fans]
    assert all(0 <= s < shards for s in placed)
    assert placed == [pending_shard(f, shards) for f in fans]
    # crc32 is the same in every process (unlike hash()), so every worker agrees on a fan's shard
    assert placed == [zlib.crc32(f.encode()) % shards for f in fans]


def test_pending_shards_are_all_used() -> None:
    assert {pending_shard(f"fan{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert {pending_shard(f"fan{i}", 1) for i in range(50)} == {0}


@pytest.mark.parametrize("fan_id", ["fan1", "f", "a-b_c", "x" * 64])
def test_fan_of_inverts_notification_key(fan_id: str) -> None:
    assert fan_of(notification_key("sale1", fan_id)["sk"]) == fan_id


@pytest.mark.parametrize("sale_id", ["s", "sale_2026-11", "x" * 64])
def test_sale_of_inverts_sale_partition(sale_id: str) -> None:
    assert sale_of(sale_key(sale_id)["pk"]) == sale_id
    assert sale_of(notification_key(sale_id, "fan1")["pk"]) == sale_id


@pytest.mark.parametrize("phone", ["+15550001234", "+447700900123"])
def test_phone_of_inverts_optout_key(phone: str) -> None:
    assert phone_of(optout_key(phone)["pk"]) == phone
