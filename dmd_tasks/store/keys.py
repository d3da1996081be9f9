"""Every key and index string of the ``demand`` table, in one place (docs/data-model.md).

Items: ``pk``/``sk``. Indexes (both sparse: an item carries their attributes only while it
must be found through them):

- ``gsi1`` (``gsi1pk``/``gsi1sk``, ALL): due sales, stalled generations, and every notification
  still in flight, per sale and shard: pending by send-after time, scheduled by the time it
  was due to be sent, being sent by lease expiry;
- ``gsi2`` (``gsi2pk``/``gsi2sk``, KEYS_ONLY): the active sales, and provider message id →
  notification.
"""

from __future__ import annotations

import zlib

from dmd_tasks.domain.entities import Entity
from dmd_tasks.store.codec import epoch_key

GSI1 = "gsi1"
GSI2 = "gsi2"

EVENT_PREFIX = "EVENT#"
SALE_PREFIX = "SALE#"
DEMAND_PREFIX = "DEMAND#"
NOTIFICATION_PREFIX = "NOTIFICATION#"
OPTOUT_PREFIX = "OPTOUT#"
PHONE_CLAIM_PREFIX = "PHONE#"

#: gsi1 partitions of sales, by status.
SALES_WAITING = "SALES#waiting"
SALES_GENERATING = "SALES#generating"
#: gsi2 partition listing the sales the scheduler works on.
ACTIVE_SALES = "ACTIVE_SALES"
#: gsi2 sort key of a provider message id's entry.
MESSAGE_INDEX_SK = "NOTIFICATION"

Key = dict[str, str]


def event_partition(event_id: str) -> str:
    return f"{EVENT_PREFIX}{event_id}"


def sale_partition(sale_id: str) -> str:
    return f"{SALE_PREFIX}{sale_id}"


def event_key(event_id: str) -> Key:
    return {"pk": event_partition(event_id), "sk": "EVENT"}


def demand_key(event_id: str, fan_id: str) -> Key:
    return {"pk": event_partition(event_id), "sk": f"{DEMAND_PREFIX}{fan_id}"}


def sale_key(sale_id: str) -> Key:
    return {"pk": sale_partition(sale_id), "sk": "SALE"}


def sale_run_key(sale_id: str) -> Key:
    """The pipeline's record of a sale's runs, beside the product's SALE item (which a re-save replaces)."""
    return {"pk": sale_partition(sale_id), "sk": "RUN"}


def notification_key(sale_id: str, fan_id: str) -> Key:
    return {"pk": sale_partition(sale_id), "sk": f"{NOTIFICATION_PREFIX}{fan_id}"}


def phone_claim_key(sale_id: str, phone: str) -> Key:
    """Which fan of a sale a normalized phone number was given to (one SMS per phone per sale)."""
    return {"pk": f"{PHONE_CLAIM_PREFIX}{sale_id}#{phone}", "sk": "PHONE"}


def optout_key(phone: str) -> Key:
    return {"pk": f"{OPTOUT_PREFIX}{phone}", "sk": "OPTOUT"}


def own_entity_of(pk: object, sk: object) -> Entity | None:
    """The kind of an item the pipeline itself writes, told by its key alone:
    a change of one whose image carries no ``entity`` (an update that created the item, a
    keys-only image) is still recognised. None for any other key: the product's items (events,
    demand rows, sales) must say what they are."""
    if not isinstance(pk, str) or not isinstance(sk, str):
        return None
    if pk.startswith(SALE_PREFIX):
        if sk == "RUN":
            return Entity.SALE_RUN
        if sk.startswith(NOTIFICATION_PREFIX):
            return Entity.NOTIFICATION
    if pk.startswith(PHONE_CLAIM_PREFIX) and sk == "PHONE":
        return Entity.PHONE_CLAIM
    if pk.startswith(OPTOUT_PREFIX) and sk == "OPTOUT":
        return Entity.OPTOUT
    return None


def fan_of(notification_sk: str) -> str:
    """The fan id in a notification's sort key."""
    return notification_sk[len(NOTIFICATION_PREFIX) :]


def demand_fan(demand_sk: str) -> str:
    """The fan id in a demand row's sort key."""
    return demand_sk[len(DEMAND_PREFIX) :]


def sale_of(sale_pk: str) -> str:
    """The sale id in a sale partition key."""
    return sale_pk[len(SALE_PREFIX) :]


def phone_of(optout_pk: str) -> str:
    """The phone number in an opt-out's partition key."""
    return optout_pk[len(OPTOUT_PREFIX) :]


def pending_shard(fan_id: str, shards: int) -> int:
    """Which of a sale's ``shards`` pending-index partitions holds this fan (crc32: stable everywhere)."""
    return zlib.crc32(fan_id.encode()) % shards


def pending_index(sale_id: str, shard: int) -> str:
    """gsi1 partition of a sale's pending notifications (one of ``pending_shards``)."""
    return f"PENDING#{sale_id}#{shard}"


def pending_sort(send_after: float, fan_id: str) -> str:
    """gsi1 sort key of a pending notification: due time first, so a range query takes the due ones."""
    return f"{epoch_key(send_after)}#{fan_id}"


def scheduled_index(sale_id: str, shard: int) -> str:
    """gsi1 partition of a sale's scheduled notifications, sorted by when each was due to be sent."""
    return f"SCHEDULED#{sale_id}#{shard}"


def sending_index(sale_id: str, shard: int) -> str:
    """gsi1 partition of a sale's notifications being sent, sorted by lease expiry."""
    return f"SENDING#{sale_id}#{shard}"


def unconfirmed_index(sale_id: str, shard: int) -> str:
    """gsi1 partition of a sale's unconfirmed sends, sorted by when the wait for an event ends."""
    return f"UNCONFIRMED#{sale_id}#{shard}"


def message_index(message_id: str) -> str:
    """gsi2 partition mapping a provider message id to its notification."""
    return f"MSG#{message_id}"
