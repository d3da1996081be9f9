"""One trace follows a notification: bridge record → send → delivery receipt.

Spans go to an in-memory exporter, so the three parts run in this process: the bridge's
handler on a real stream record shape, a real Celery worker (in a thread) consuming the
``send`` queue on moto, the SMS simulator, and the receipt applied by the status logic.
"""

from __future__ import annotations

import time
import uuid
from datetime import time as clock

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Event
from dmd_tasks.store.codec import serialize
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import notification_key
from tests.helpers import in_memory_spans, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def spans():  # type: ignore[no-untyped-def]
    from dmd_tasks.infra import tracing

    exporter = in_memory_spans()
    tracing.instrument_celery()  # on the process's provider (once per process)
    return exporter


def test_one_trace_from_the_stream_record_to_the_receipt(spans, settings, stack, sim) -> None:  # type: ignore[no-untyped-def]
    from celery.contrib.testing.worker import start_worker

    from bridges.demand import build_handler
    from dmd_tasks.celery_app import app
    from dmd_tasks.domain.provider_events import StatusEvent
    from dmd_tasks.pipeline.records import parse_change
    from dmd_tasks.pipeline.routing import SEND_NOTIFICATIONS as SEND_TASK
    from dmd_tasks.pipeline.stage5_sms_status import apply_event
    from dmd_tasks.services import Services

    services = Services(settings)
    run = uuid.uuid4().hex[:8]
    sale_id, fan_id = f"tr{run}", "fan1"
    event = Event(id=f"ev{run}", name="Traced", url="https://www.ticketmaster.com/e/t", shortUrl="https://bit.ly/t")
    services.table.put_items([item(event)])
    services.campaigns.put(
        Campaign(
            saleId=sale_id,
            eventId=event.id,
            template="{{ short_url }}",
            window=SendWindow(start=clock(0), end=clock(0)),
        )
    )
    pending = services.notifications.new_item(
        sale_id=sale_id,
        event_id=event.id,
        fan_id=fan_id,
        phone="+15557770001",
        tz="UTC",
        send_after=time.time(),
        now=time.time(),
    )
    services.table.put_items([pending])
    assert services.notifications.schedule(sale_id, fan_id, time.time())
    scheduled = {**pending, "status": "scheduled"}
    record = {
        "eventID": uuid.uuid4().hex,
        "eventName": "MODIFY",
        "dynamodb": {"SequenceNumber": "1", "NewImage": serialize(scheduled), "OldImage": serialize(pending)},
    }

    # Given the bridge routing the notification's change, and a worker on the send queue
    handler = build_handler(settings, parse_change)
    app.loader.import_default_modules()
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, queues=["send"], loglevel="WARNING"):
        handler([record], "shard-1")
        wait_until(
            lambda: services.notifications.status_of(sale_id, fan_id) == "sent",
            timeout=60,
            what="the notification sent",
        )
    stored = services.table.get(notification_key(sale_id, fan_id), what="test") or {}
    # When the provider's receipt comes back
    receipt = StatusEvent(
        type="status",
        message_id=stored["providerMessageId"],
        status="delivered",
        timestamp="2026-11-25T00:00:00Z",
        reference=f"{sale_id}:{fan_id}",
    )
    assert apply_event(services, receipt) == "delivered"

    # Then one trace holds the bridge's record span, the send span under it, and the receipt under that
    finished = spans.get_finished_spans()
    by_name = {
        s.name: s
        for s in finished
        if s.attributes.get("dmd.notification_id") == f"{sale_id}:{fan_id}"
        or s.attributes.get("dmd.item") == f"{sale_id}:{fan_id}"
    }
    bridge = by_name["bridge-demand route send_notifications"]
    send = by_name["send notification"]
    receipt_span = by_name["delivery receipt"]
    assert send.context.trace_id == bridge.context.trace_id == receipt_span.context.trace_id
    assert send.parent.span_id == bridge.context.span_id
    assert receipt_span.parent.span_id == send.context.span_id
    # and Celery's own publish/run spans follow the message: the run is a child of the bridge's publish
    publish = next(
        s for s in finished if s.name == f"apply_async/{SEND_TASK}" and s.context.trace_id == bridge.context.trace_id
    )
    run_span = next(
        s
        for s in finished
        if s.name == f"run/{SEND_TASK}" and s.parent is not None and s.parent.span_id == publish.context.span_id
    )
    assert publish.parent.span_id == bridge.context.span_id
    assert run_span.context.trace_id == bridge.context.trace_id
