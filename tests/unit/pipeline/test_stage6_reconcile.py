"""Stage 6, the reconciler, called directly against moto with an explicit clock (no beat, no worker):
expired send leases taken back or failed, lost send messages published again or failed, late pending
notifications failed, ended sales retired in two looks, and what it did counted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from dmd_tasks.infra.deadline import Deadline, Gate
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.infra.topology import SEND_NOTIFICATIONS
from dmd_tasks.pipeline import stage6_reconcile as stage6
from dmd_tasks.pipeline.chain import send_calls
from dmd_tasks.pipeline.stage2_generate import generate_sale
from dmd_tasks.pipeline.stage6_reconcile import Reconciler, reconcile
from dmd_tasks.services import Services
from dmd_tasks.store.codec import epoch_key

Seed = Callable[..., str]
Notifications = Callable[[Services, str], list[dict[str, Any]]]
Outboxes = Callable[..., Any]

STALE = 30  # scheduled_stale_seconds
DEADLINE = 60  # pending_deadline_seconds
INTERVAL = 10  # reconcile_interval_seconds: a sale is retired at a second look at least 5 s after the first


@pytest.fixture()
def services(stack) -> Services:
    # this module's own deadlines, small, so that an explicit clock a minute ahead passes them
    return Services(
        load_settings(
            generate_chunk_size=5,
            generate_chunks_per_run=2,
            scheduled_stale_seconds=STALE,
            max_republishes=2,
            pending_deadline_seconds=DEADLINE,
            reconcile_interval_seconds=INTERVAL,
            send_batch_size=2,
        )
    )


class FakeApp:
    """Stands in for the reconciler's publishing: records the send tasks it would publish, batched
    as ``chain.publish_sends`` batches them."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, notification_ids: list[str]) -> None:
        self.sent += [(SEND_NOTIFICATIONS, call.args) for call in send_calls(notification_ids, self.batch_size)]


@pytest.fixture()
def app(services: Services) -> FakeApp:
    return FakeApp(services.settings.send_batch_size)


@pytest.fixture()
def only_these_sales(services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The active list ``reconcile`` walks, limited to the sales a test appends (the session's table
    holds every other test's active sales too)."""
    mine: list[str] = []
    monkeypatch.setattr(services.sales, "active", lambda: list(mine))
    yield mine


def actions_counted(action: str) -> float:
    return REGISTRY.get_sample_value("dmd_reconciler_actions_total", {"action": action}) or 0.0


def generated(services: Services, seed_sale: Seed, n: int) -> str:
    """A sale of ``n`` fans, claimed and generated to the end (every notification ``pending``)."""
    sale_id = seed_sale(services, n)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    while generate_sale(sale_id, services).outcome == "continue":
        pass
    return sale_id


def sent(services: Services, sale_id: str, fan_id: str) -> None:
    now = time.time()
    notifications = services.notifications
    assert notifications.schedule(sale_id, fan_id, now)
    claim = notifications.claim_for_send(sale_id, fan_id, now, 60)
    assert claim is not None
    assert notifications.mark_sent(sale_id, fan_id, f"SM{fan_id}{sale_id}", now, lease_token=claim["leaseToken"])


def due_at(item: dict[str, Any]) -> float:
    """When a scheduled notification was due, as its index entry says."""
    return float(item["gsi1sk"])


# --- sending past its lease -----------------------------------------------------------------------


def test_expired_send_leases_are_taken_back_or_failed_on_the_last_attempt(services: Services, outbox: Outboxes) -> None:
    # Given three notifications in "sending": two whose worker died a while ago (one on its last
    # attempt) and one still being sent
    box = outbox()
    long_ago = time.time() - 120
    for fan_id, attempts in (("dead1", 0), ("dead2", 2)):
        box.add(fan_id, attempts=attempts)
        assert services.notifications.claim_for_send(box.sale_id, fan_id, long_ago, 60) is not None
    box.add("alive", status="sending")
    alive_before = box.item("alive")

    # When the reconciler visits the sale
    now = time.time()
    reconciler = Reconciler(services, now)
    reconciler.sale(box.sale_id)

    # Then the first goes back to scheduled (due now, a new round) with one more attempt, the second
    # fails, the live one stays as it was
    assert reconciler.actions == {"lease_taken_back": 1, "failed_lease_expired": 1}
    retried, failed = box.item("dead1"), box.item("dead2")
    assert (retried["status"], retried["attempts"], retried["round"]) == ("scheduled", 1, 2)
    assert "same idempotency key" in retried["lastError"]
    assert retried["gsi1sk"] == epoch_key(now) and not {"leaseUntil", "leaseToken"} & set(retried)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["reason"] == "send lease expired on the last attempt"
    assert "gsi1pk" not in failed
    assert box.item("alive") == alive_before
    # And a second pass (or a second reconciler) finds nothing more to do
    again = Reconciler(services, now)
    again.sale(box.sale_id)
    assert again.actions == {}


def test_an_expired_lease_whose_call_to_a_provider_without_idempotency_started_is_never_sent_again(
    services: Services, outbox: Outboxes
) -> None:
    # Given two notifications whose worker died a while ago: one had started its call to End User
    # Messaging (which cannot deduplicate), the other died before its call
    box = outbox()
    long_ago = time.time() - 120
    for fan_id in ("called", "uncalled"):
        box.add(fan_id)
        claim = services.notifications.claim_for_send(box.sale_id, fan_id, long_ago, 60)
        assert claim is not None
        if fan_id == "called":
            assert services.notifications.mark_calling(box.sale_id, fan_id, "eum", long_ago + 1, claim["leaseToken"])

    # When the reconciler visits the sale
    now = time.time()
    reconciler = Reconciler(services, now)
    reconciler.sale(box.sale_id)

    # Then the one whose call started waits unconfirmed for the provider's event (its window counted
    # from the call), and the other is sent again
    assert reconciler.actions == {"unconfirmed_lease_expired": 1, "lease_taken_back": 1}
    waiting = box.item("called")
    assert waiting["status"] == "unconfirmed" and waiting["attempts"] == 0
    assert waiting["gsi1sk"] == epoch_key(long_ago + 1 + services.settings.unconfirmed_window_seconds)
    assert "the SMS may have gone" in waiting["lastError"]
    assert box.item("uncalled")["status"] == "scheduled"

    # And once its window is over with no event, it ends unknown, once
    later = long_ago + 2 + services.settings.unconfirmed_window_seconds
    ended = Reconciler(services, later)
    ended.sale(box.sale_id)
    assert ended.actions["unknown_no_event"] == 1  # (the other, never claimed since, is republished)
    unknown = box.item("called")
    assert unknown["status"] == "unknown" and "is unknown" in unknown["reason"] and "gsi1pk" not in unknown
    again = Reconciler(services, later)
    again.sale(box.sale_id)
    assert "unknown_no_event" not in again.actions


def test_a_call_recorded_in_an_earlier_round_does_not_make_a_later_one_unconfirmed(
    services: Services, outbox: Outboxes
) -> None:
    # Given a send whose call was refused (nothing sent: retried), claimed again by a worker that
    # died before its own call
    box = outbox()
    box.add("fan1")
    long_ago = time.time() - 120
    first = services.notifications.claim_for_send(box.sale_id, "fan1", long_ago - 10, 60)
    assert first is not None
    assert services.notifications.mark_calling(box.sale_id, "fan1", "eum", long_ago - 9, first["leaseToken"])
    assert services.notifications.mark_retry(
        box.sale_id, "fan1", 1, long_ago - 8, "eum send: InternalServerException", lease_token=first["leaseToken"]
    )
    assert services.notifications.claim_for_send(box.sale_id, "fan1", long_ago, 60) is not None
    assert "callStartedAt" not in box.item("fan1")

    # When its lease has expired, the reconciler takes it back: this round made no call
    reconciler = Reconciler(services, time.time())
    reconciler.sale(box.sale_id)
    assert reconciler.actions == {"lease_taken_back": 1}


# --- scheduled and never claimed: the send message was lost -------------------------------------


def test_a_lost_send_is_published_again_once_per_deadline_then_failed(
    services: Services, outbox: Outboxes, app: FakeApp, only_these_sales: list[str]
) -> None:
    # Given a scheduled notification whose send message never arrives
    box = outbox()
    nid, _ = box.add("lost")
    only_these_sales.append(box.sale_id)
    t0 = due_at(box.item("lost"))

    # While it is not yet stale, nothing is done
    assert reconcile(services, app, t0 + STALE - 1) == {"sales": 1}
    assert app.sent == []

    # Once stale, it is published again, once however many reconcilers look in that deadline
    assert reconcile(services, app, t0 + STALE + 1) == {"sales": 1, "republished": 1}
    assert reconcile(services, app, t0 + STALE + 2) == {"sales": 1}
    assert reconcile(services, app, t0 + 2 * STALE) == {"sales": 1}
    assert app.sent == [(SEND_NOTIFICATIONS, ([nid],))]
    item = box.item("lost")
    assert (item["status"], item["republished"], item["gsi1sk"]) == ("scheduled", 1, epoch_key(t0 + STALE + 1))

    # and once more a deadline later
    assert reconcile(services, app, t0 + 2 * STALE + 2) == {"sales": 1, "republished": 1}
    assert len(app.sent) == 2 and box.item("lost")["republished"] == 2

    # When it is still lost after max_republishes (2), it fails with the reason, and is not published
    assert reconcile(services, app, t0 + 3 * STALE + 3) == {"sales": 1, "failed_lost_message": 1}
    failed = box.item("lost")
    assert failed["status"] == "failed" and "lost 2 times" in failed["reason"]
    assert "gsi1pk" not in failed
    assert len(app.sent) == 2


def test_republished_sends_go_out_in_batches(
    services: Services, outbox: Outboxes, app: FakeApp, only_these_sales: list[str]
) -> None:
    box = outbox()
    ids = [box.add(f"lost{i}")[0] for i in range(3)]
    only_these_sales.append(box.sale_id)
    latest = max(due_at(box.item(f"lost{i}")) for i in range(3))

    assert reconcile(services, app, latest + STALE + 1) == {"sales": 1, "republished": 3}

    # send_batch_size is 2 here
    assert [name for name, _ in app.sent] == [SEND_NOTIFICATIONS] * 2
    assert sorted(nid for _, (batch,) in app.sent for nid in batch) == sorted(ids)
    assert [len(batch) for _, (batch,) in app.sent] == [2, 1]


def test_a_notification_whose_id_cannot_be_routed_fails_at_once(
    services: Services, outbox: Outboxes, app: FakeApp, only_these_sales: list[str]
) -> None:
    # Given a scheduled notification whose fan id is not a valid id (the bridge can never route it)
    box = outbox()
    box.add("bad.fan")
    only_these_sales.append(box.sale_id)
    t0 = due_at(box.item("bad.fan"))

    # When it is found stale, it is failed at the first look, not published again
    assert reconcile(services, app, t0 + STALE + 1) == {"sales": 1, "failed_invalid_id": 1}
    failed = box.item("bad.fan")
    assert failed["status"] == "failed" and "invalid fan id" in failed["reason"]
    assert "gsi1pk" not in failed
    assert app.sent == []


# --- pending past its deadline ----------------------------------------------------------------------


def test_a_pending_notification_past_its_deadline_fails(services: Services, outbox: Outboxes) -> None:
    # Given a notification pending since its send time, and one that may be sent only in an hour
    box = outbox()
    box.add("late", status="pending")
    send_after = float(box.item("late")["sendAfter"])
    now = time.time()
    later = services.notifications.new_item(
        sale_id=box.sale_id,
        event_id=box.event_id,
        fan_id="later",
        phone="+15550000001",
        tz="UTC",
        send_after=now + 3600,
        now=now,
    )
    services.notifications_table.put_items([later])

    # While its deadline has not passed, it stays pending
    early = Reconciler(services, send_after + DEADLINE)
    early.sale(box.sale_id)
    assert early.actions == {} and box.item("late")["status"] == "pending"

    # Once it has, it fails with the reason; the one due in an hour is left pending
    late = Reconciler(services, send_after + DEADLINE + 2)
    late.sale(box.sale_id)
    assert late.actions == {"failed_pending_deadline": 1}
    failed = box.item("late")
    assert failed["status"] == "failed" and f"within {DEADLINE}s" in failed["reason"]
    assert "gsi1pk" not in failed
    assert box.item("later")["status"] == "pending"


# --- retiring ended sales -------------------------------------------------------------------------


def test_a_generated_sale_is_retired_at_the_second_quiet_look(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    sale_id = generated(services, seed_sale, 2)
    assert sale_id in services.sales.active()
    t1 = float(int(time.time()))

    # While notifications are pending, the sale stays active and is not even noted quiet
    Reconciler(services, t1).sale(sale_id)
    assert "quietSince" not in services.sales.get(sale_id)  # type: ignore[operator]

    # Once every one is sent (out of every index), the first look notes it quiet, and keeps it
    for fan_id in [i["fanId"] for i in sale_notifications(services, sale_id)]:
        sent(services, sale_id, fan_id)
    first = Reconciler(services, t1)
    first.sale(sale_id)
    assert services.sales.get(sale_id)["quietSince"] == int(t1)  # type: ignore[index]
    assert first.actions == {} and sale_id in services.sales.active()
    # a look too soon after changes nothing
    soon = Reconciler(services, t1 + INTERVAL / 2 - 1)
    soon.sale(sale_id)
    assert soon.actions == {} and sale_id in services.sales.active()

    # Then a look half an interval later retires it
    second = Reconciler(services, t1 + INTERVAL / 2)
    second.sale(sale_id)
    assert second.actions == {"sale_retired": 1}
    assert sale_id not in services.sales.active()
    stored = services.sales.get(sale_id)
    assert stored is not None and stored["status"] == "generated" and "quietSince" not in stored


def test_a_failed_sale_stays_active_until_what_it_wrote_is_final(
    services: Services, seed_sale: Seed, sale_notifications: Notifications
) -> None:
    # Given a sale that failed after its first run wrote 10 of its 12 notifications
    sale_id = seed_sale(services, 12)
    assert services.sales.claim(sale_id, time.time(), 60) == "claimed"
    assert generate_sale(sale_id, services).written == 10
    assert services.sales.fail(sale_id, "campaign no longer valid", time.time())
    t1 = float(int(time.time()))

    # Then while those are pending it stays active, at any number of looks
    for at in (t1, t1 + INTERVAL, t1 + 2 * INTERVAL):
        Reconciler(services, at).sale(sale_id)
    assert sale_id in services.sales.active()

    # When they are all final, two looks retire it
    for item in sale_notifications(services, sale_id):
        assert services.notifications.mark_failed(sale_id, item["fanId"], "sale failed", source="pending")
    Reconciler(services, t1 + 3 * INTERVAL).sale(sale_id)
    assert sale_id in services.sales.active()
    Reconciler(services, t1 + 4 * INTERVAL).sale(sale_id)
    assert sale_id not in services.sales.active()


@pytest.mark.parametrize("state", ["pending", "scheduled", "sending", "unconfirmed"])
def test_a_sale_with_a_notification_in_flight_is_not_retired(services: Services, seed_sale: Seed, state: str) -> None:
    # Given a generated sale whose only unfinished notification is in one in-flight state
    sale_id = generated(services, seed_sale, 2)
    sent(services, sale_id, "fan000")
    now = time.time()
    if state in ("scheduled", "sending", "unconfirmed"):
        assert services.notifications.schedule(sale_id, "fan001", now)
    if state in ("sending", "unconfirmed"):
        claim = services.notifications.claim_for_send(sale_id, "fan001", now, 60)
        assert claim is not None
    if state == "unconfirmed":
        assert services.notifications.mark_unconfirmed(
            sale_id,
            "fan001",
            now + 3600,
            "no answer",
            lease_token=claim["leaseToken"],  # type: ignore[index]
        )

    # When the reconciler looks at it twice, half an interval apart (before any of its deadlines)
    for at in (now, now + INTERVAL / 2 + 1):
        reconciler = Reconciler(services, at)
        reconciler.sale(sale_id)
        assert reconciler.actions == {}

    # Then it is neither noted quiet nor retired, and the notification is where it was
    stored = services.sales.get(sale_id)
    assert stored is not None and "quietSince" not in stored
    assert sale_id in services.sales.active()
    assert services.notifications.status_of(sale_id, "fan001") == state


# --- what it did, counted -----------------------------------------------------------------------------


def test_every_action_of_a_pass_is_returned_and_counted(
    services: Services, outbox: Outboxes, app: FakeApp, only_these_sales: list[str]
) -> None:
    # Given one sale with something for each of the reconciler's moves on notifications
    box = outbox()
    only_these_sales.append(box.sale_id)
    box.add("dead", status="sending")
    box.add("last", status="sending", attempts=2)
    box.add("lost")
    box.add("bad.fan")
    box.add("late", status="pending")
    now = time.time() + 2 * DEADLINE  # every lease (60 s), every staleness and the pending deadline passed
    moves = ("lease_taken_back", "failed_lease_expired", "republished", "failed_invalid_id", "failed_pending_deadline")
    before = {action: actions_counted(action) for action in moves}

    # When one pass runs
    done = reconcile(services, app, now)

    # Then each move is done once, returned, and counted in dmd_reconciler_actions_total{action}
    assert done == {"sales": 1, **dict.fromkeys(moves, 1)}
    assert {action: actions_counted(action) - before[action] for action in moves} == dict.fromkeys(moves, 1.0)
    statuses = {fan: box.item(fan)["status"] for fan in ("dead", "last", "lost", "bad.fan", "late")}
    assert statuses == {
        "dead": "scheduled",
        "last": "failed",
        "lost": "scheduled",
        "bad.fan": "failed",
        "late": "failed",
    }
    # and both back in scheduled have their send task: the lost one's again, the taken-back one's
    # (a notification's own transitions are not routed by the demand bridge: the reconciler publishes)
    assert app.sent == [(SEND_NOTIFICATIONS, ([f"{box.sale_id}:dead", f"{box.sale_id}:lost"],))]


def test_unconfirmed_sends_are_looked_at_every_minute_or_quarter_window_not_every_pass() -> None:
    hour, gate = load_settings(unconfirmed_window_seconds=3600), Gate()
    assert [stage6.unconfirmed_due(hour, gate, t) for t in (1000, 1030, 1059, 1060, 1061)] == [
        True,
        False,
        False,
        True,
        False,
    ]
    short = load_settings(unconfirmed_window_seconds=20)  # a quarter of it: 5 s
    gate = Gate()
    assert [stage6.unconfirmed_due(short, gate, t) for t in (2000, 2004, 2005)] == [True, False, True]


def test_a_pass_out_of_time_leaves_the_sales_it_did_not_reach_to_the_next_and_says_so(
    services: Services, outbox: Outboxes, app: FakeApp, only_these_sales: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three sales, each with a send whose lease expired, and a store that takes 0.4 s a sale
    boxes = [outbox() for _ in range(3)]
    for box in boxes:
        only_these_sales.append(box.sale_id)
        box.add("dead", status="sending")
    real = Reconciler.sale

    def slow(self: Reconciler, sale_id: str) -> None:
        time.sleep(0.4)
        real(self, sale_id)

    monkeypatch.setattr(Reconciler, "sale", slow)
    now = time.time() + 2 * DEADLINE

    # When a pass with half a second of budget runs, then it reaches two sales at most and says
    # how many it left; what it did is done
    done = reconcile(services, app, now, deadline=Deadline.after(0.5))
    assert done["sales"] + done["sales_left"] == 3 and done["sales_left"] >= 1, done
    assert done["lease_taken_back"] == done["sales"]
    # and the next passes reach the others (in a random order: none waits behind the rest for ever)
    for _ in range(20):
        if all(box.item("dead")["status"] == "scheduled" for box in boxes):
            break
        reconcile(services, app, now, deadline=Deadline.after(0.5))
    assert [box.item("dead")["status"] for box in boxes] == ["scheduled"] * 3
