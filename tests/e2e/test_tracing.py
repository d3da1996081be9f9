"""One trace follows a notification: the scheduling tick that moved it → its send → its receipt.

Spans go to an in-memory exporter, so the three parts run in this process: the scheduler's
tick (publishing the send task of what it moved, as beat's tick does), a real Celery worker (in
a thread) consuming the ``send`` queue on moto, the SMS simulator, and the receipt applied by
the status logic.
"""

from __future__ import annotations

import time
import uuid
from datetime import time as clock

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.entities import Event
from dmd_tasks.store.items import item
from dmd_tasks.store.keys import notification_key
from tests.helpers import in_memory_spans, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def spans():
    from dmd_tasks.infra import tracing

    exporter = in_memory_spans()
    tracing.instrument_celery()  # on the process's provider (once per process)
    return exporter


def test_one_trace_from_the_scheduling_tick_to_the_receipt(spans, settings, stack, sim) -> None:
    from celery.contrib.testing.worker import start_worker

    from dmd_tasks.celery_app import app
    from dmd_tasks.domain.provider_events import StatusEvent
    from dmd_tasks.infra import tracing
    from dmd_tasks.infra.topology import SEND_NOTIFICATIONS as SEND_TASK
    from dmd_tasks.pipeline.chain import publish_sends
    from dmd_tasks.pipeline.stage3_schedule import run_tick
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
        send_after=time.time() - 1,
        now=time.time(),
    )
    services.notifications_table.put_items([pending])

    # Given a worker on the send queue, when a scheduling tick moves the notification (and
    # publishes its send task, as the tick beat starts does)
    app.loader.import_default_modules()
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, queues=["send"], loglevel="WARNING"):
        with tracing.continued("schedule tick", None) as tick_span:
            tick = tick_span.get_span_context()
            result = run_tick(services, sale_ids=[sale_id], publish=lambda ids: publish_sends(app, settings, ids))
        assert result.scheduled == 1
        wait_until(
            lambda: services.notifications.status_of(sale_id, fan_id) == "sent",
            timeout=60,
            what="the notification sent",
        )
    stored = services.notifications_table.get(notification_key(sale_id, fan_id), what="test") or {}
    # When the provider's receipt comes back
    receipt = StatusEvent(
        type="status",
        message_id=stored["providerMessageId"],
        status="delivered",
        timestamp="2026-11-25T00:00:00Z",
        reference=f"{sale_id}:{fan_id}",
    )
    assert apply_event(services, receipt) == "delivered"

    # Then one trace holds the tick, Celery's publish of the send task under it, the send task's
    # run under that, the notification's send span, and the receipt under the send
    finished = spans.get_finished_spans()
    mine = [s for s in finished if s.context.trace_id == tick.trace_id]
    by_name = {s.name: s for s in mine}
    publish = by_name[f"apply_async/{SEND_TASK}"]
    run_span = by_name[f"run/{SEND_TASK}"]
    send = next(
        s
        for s in mine
        if s.attributes.get("dmd.notification_id") == f"{sale_id}:{fan_id}" and s.name == "send notification"
    )
    receipt_span = by_name["delivery receipt"]
    assert publish.parent.span_id == tick.span_id
    assert run_span.parent.span_id == publish.context.span_id
    assert send.parent.span_id == run_span.context.span_id
    assert receipt_span.parent.span_id == send.context.span_id
