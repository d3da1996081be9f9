"""Sales through AWS End User Messaging SMS, end to end: the Procfile's processes (with
``bridge-sqs``) sending through boto3's ``pinpoint-sms-voice-v2`` client to the simulator, which
publishes the service's SMS events to the SNS topic ``dmd provision`` subscribed the intake queue
to (moto's SNS and SQS).

The service cannot deduplicate: a send that got no answer is never sent again. It waits,
``unconfirmed``, for the event the service publishes (matched by the notification id in
``Context``), and ends ``unknown`` when none comes in time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dmd_tasks.ops.demo import PIPELINE_PROCESSES
from dmd_tasks.ops.stack import ProcessGroup
from dmd_tasks.store.table import DemandTable
from tests.chaos.scenario import all_terminal, counts, figures, start_sale
from tests.helpers import clear_circuits, eum_account, wait_until

pytestmark = pytest.mark.e2e

FANS = 40
#: a window for the provider's event far shorter than a real one (an hour), so that the test sees
#: a send with no event end ``unknown``
WINDOW = 20
IDENTITY = "+18005550199"


@pytest.fixture(scope="module")
def eum_env(settings, stack) -> dict[str, str]:
    return {
        **eum_account(settings, IDENTITY, "dmd-e2e"),
        "DMD_SMS_TIMEOUT_SECONDS": "1",
        "DMD_UNCONFIRMED_WINDOW_SECONDS": str(WINDOW),
        "DMD_CLAIM_INTERVAL_SECONDS": "1",
        "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
        "DMD_RECONCILE_INTERVAL_SECONDS": "2",
    }


@pytest.fixture(scope="module")
def pipeline(settings, stack, sim, eum_env) -> Iterator[ProcessGroup]:
    sim.configure(eum={"status_delay_ms": 100})
    group = ProcessGroup(settings.run_dir.resolve() / "logs" / "e2e-eum", env=eum_env)
    group.start([*PIPELINE_PROCESSES, "bridge-sqs"])
    try:
        yield group
    finally:
        group.stop()
        sim.configure(eum={"status_delay_ms": 200, "timeout_rate": 0, "timeout_ms": 0})


def notifications(settings, sale_id: str) -> list[dict]:
    return list(DemandTable(settings).for_notifications().query_all(f"SALE#{sale_id}", "NOTIFICATION#"))


def test_a_sale_through_end_user_messaging_gets_its_receipts_back_through_sns_and_sqs(pipeline, settings, sim) -> None:
    # Given a sale sent through End User Messaging
    sale_id, _ = start_sale(settings, FANS, rate=50)

    # Then every notification ends with the status the service's event gave it
    final = wait_until(lambda: all_terminal(settings, sale_id, FANS), timeout=180, what="every notification final")
    assert set(final) <= {"delivered", "undelivered", "failed"}, final
    result = figures(settings, sim, sale_id, FANS, 0)
    assert result["duplicates"] == 0 and result["provider_accepted"] == FANS, result
    # And each request carried the notification id in Context and the message's validity as its TTL
    items = notifications(settings, sale_id)
    sample = sim.eum_message(items[0]["providerMessageId"])
    assert sample["context"] == {"notificationId": items[0]["id"]}
    assert sample["configurationSet"] == "dmd-e2e" and sample["origination"] == IDENTITY
    assert 5 <= sample["timeToLive"] <= 259_200
    # And the events came back the way they do on AWS: SNS → the intake queue → bridge-sqs
    assert sim.stats()["eum"]["events_emitted"].get("TEXT_DELIVERED", 0) >= final.get("delivered", 0)
    assert all(i.get("provider") == "eum" and "callStartedAt" in i for i in items)
    assert not pipeline.dead(), pipeline.dead()


def test_sends_without_an_answer_are_never_repeated_and_settled_by_the_services_events(pipeline, settings, sim) -> None:
    # Given a service that accepts a third of the messages but answers only after the client gave up
    sim.configure(eum={"timeout_rate": 0.35, "timeout_ms": 1500})
    try:
        sale_id, _ = start_sale(settings, FANS, rate=50)
        final = wait_until(lambda: all_terminal(settings, sale_id, FANS), timeout=180, what="every notification final")
    finally:
        sim.configure(eum={"timeout_rate": 0})
    # Then no fan got two SMS, and every ambiguous send was settled by its event, not a resend:
    # the sends the sender saw time out (its log says so: the service's event may have settled one
    # before the timeout did, so its record need not say it) are final without a second attempt
    result = figures(settings, sim, sale_id, FANS, 0)
    assert result["duplicates"] == 0 and result["provider_accepted"] == FANS, result
    assert set(final) <= {"delivered", "undelivered", "failed"}, final
    log = (pipeline.log_dir / "worker-send.log").read_text()
    timed_out = set(re.findall(rf"notification {sale_id}:(\S+) to \S+ unconfirmed \(eum send: no answer", log))
    assert timed_out, f"no send timed out: the scenario did not happen ({result})"
    settled = [i for i in notifications(settings, sale_id) if i["fanId"] in timed_out]
    assert len(settled) == len(timed_out)
    resent = [
        {k: i.get(k) for k in ("sk", "status", "attempts", "lastError")} for i in settled if int(i.get("attempts", 0))
    ]
    assert not resent, f"{len(resent)} of {len(settled)} sends without an answer spent an attempt: {resent[:5]}"


def test_an_ambiguous_send_with_no_event_in_its_window_ends_unknown(pipeline, settings, sim) -> None:
    # Given a service that answers no call in time and whose events come long after the window,
    # and its circuit closed (the test before may have left it open: then one probe call would go
    # every DMD_CIRCUIT_OPEN_SECONDS, and five would take longer than this test waits)
    clear_circuits()
    sim.configure(eum={"timeout_rate": 1.0, "timeout_ms": 1500, "status_delay_ms": 600_000})
    try:
        sale_id, _ = start_sale(settings, 5, rate=50)
        wait_until(
            lambda: counts(settings, sale_id).get("unconfirmed", 0) == 5, timeout=60, what="five unconfirmed sends"
        )
    finally:
        sim.configure(eum={"timeout_rate": 0, "status_delay_ms": 100})
    # Then after the window each ends unknown, with the reason, and was sent exactly once
    final = wait_until(lambda: all_terminal(settings, sale_id, 5), timeout=WINDOW + 60, what="five final")
    assert final == {"unknown": 5}
    assert all("is unknown" in i["reason"] for i in notifications(settings, sale_id))
    assert figures(settings, sim, sale_id, 5, 0)["provider_accepted"] == 5
