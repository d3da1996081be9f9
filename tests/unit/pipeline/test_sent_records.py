"""The ``sent`` writes of a send batch, gathered and written together, each fenced by its lease."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from dmd_tasks.pipeline.sent_records import SentRecords
from dmd_tasks.services import Services
from dmd_tasks.store.notifications import Sent


def sent_of(box: Any, fan: str) -> Sent:
    item = box.item(fan)
    return Sent(box.sale_id, fan, f"SM{uuid.uuid4().hex}", time.time(), item["leaseToken"])


def test_sends_wait_to_be_written_together_and_a_lost_lease_changes_nothing(
    services: Services, outbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given three notifications being sent, one of whose leases the reconciler took back meanwhile
    box = outbox()
    for fan in ("a", "b", "c"):
        box.add(fan, status="sending")
    sends = {fan: sent_of(box, fan) for fan in ("a", "b", "c")}
    later = time.time() + 3600  # past the lease
    assert services.notifications.take_back(box.sale_id, "c", sends["c"].lease_token, 1, later, "taken back")
    requests: list[int] = []
    real = services.table._client.transact_write_items

    def counted(**kwargs: Any) -> Any:
        requests.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    monkeypatch.setattr(services.table._client, "transact_write_items", counted)
    records = SentRecords(services.notifications, max_items=10, max_age_seconds=60)

    # When they are recorded: nothing is written before the batch is due or flushed
    for fan in ("a", "b", "c"):
        records.add(sends[fan], idempotent=True)
    assert requests == [] and box.item("a")["status"] == "sending"
    records.flush()

    # Then the two that still held their lease were written (the lost lease cancelled the first
    # transaction of three, and the two went again); the third changed nothing, and is counted
    assert requests == [3, 2]
    assert [box.item(f)["status"] for f in "abc"] == ["sent", "sent", "scheduled"]
    assert box.item("a")["providerMessageId"] == sends["a"].message_id
    assert records.lost == 1
    assert f"{box.sale_id}:c changed before it was marked sent" in caplog.text


def test_a_batch_is_written_once_enough_waits_or_the_oldest_waited_long_enough(
    services: Services, outbox: Callable[..., Any]
) -> None:
    box = outbox()
    for fan in ("a", "b", "c"):
        box.add(fan, status="sending")
    records = SentRecords(services.notifications, max_items=2, max_age_seconds=0.3)
    records.add(sent_of(box, "a"), idempotent=True)
    assert box.item("a")["status"] == "sending"
    records.add(sent_of(box, "b"), idempotent=True)  # two waiting: written
    assert [box.item(f)["status"] for f in "ab"] == ["sent", "sent"]
    records.add(sent_of(box, "c"), idempotent=True)
    time.sleep(0.35)
    records.flush(due_only=True)  # the oldest waited long enough
    assert box.item("c")["status"] == "sent"
