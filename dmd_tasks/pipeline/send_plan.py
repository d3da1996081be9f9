"""A send batch's plan (stage 4, before its sends): each message checked, its provider chosen,
and, for each provider whose circuit is closed, one leave to call for the batch and a book of
slots for each sale's sends, reserved a pool's width of sends at a time (one request each).

Per send that leaves one Redis round trip (the last check: the account's second and the
circuit, just before the call) where checking the circuit, reserving the sale's and the
account's slots and telling the circuit of a success took four, plus a reservation for every
``aws_io_threads`` sends; successes are told together when the batch ends (a failure tells
them first). A send the plan could not cover (its provider's circuit open or half-open, Redis
unreachable) takes the per-send path, as before: nothing is decided here that its own thread
would decide otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dmd_tasks.domain.ids import split_notification_id
from dmd_tasks.infra.circuit import Permit
from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS
from dmd_tasks.infra.failover import ProviderRoute
from dmd_tasks.pipeline.send_check import Message, check_message
from dmd_tasks.pipeline.send_outcomes import Owned
from dmd_tasks.services import Services

log = logging.getLogger(__name__)


@dataclass
class Planned:
    """One send as planned: its provider, its checked message (or what stopped it: raised in the
    send's own thread, where its outcome is recorded), and, when the batch could, the batch's
    leave to call and its place in its sale's ``SlotBook``."""

    route: ProviderRoute
    message: Message | None = None
    problem: BaseException | None = None
    permit: Permit | None = None
    book: SlotBook | None = None
    index: int = 0

    def checked(self) -> Message:
        if self.problem is not None:
            raise self.problem
        assert self.message is not None
        return self.message


@dataclass
class SendPlan:
    planned: dict[str, Planned] = field(default_factory=dict)
    permits: dict[str, tuple[ProviderRoute, Permit | None]] = field(default_factory=dict)

    def close(self) -> None:
        """The batch's successes told to each circuit (best effort)."""
        for route, permit in self.permits.values():
            if permit is not None:
                route.circuit.flush(permit)


def plan_batch(services: Services, owned: list[tuple[str, dict[str, Any]]], opted_out: set[str]) -> SendPlan:
    """Check each message, choose its provider, and cover what can be covered: a batch's permit
    per provider (closed circuit), one book of slots per provider and sale."""
    plan = SendPlan()
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for nid, item in owned:
        sale_id, fan_id = split_notification_id(nid)
        route = services.sms_router.choose(item.get("pinnedProvider"))
        planned = plan.planned[nid] = Planned(route)
        try:
            planned.message = check_message(services, Owned(nid, sale_id, fan_id, item), opted_out)
        except Exception as exc:  # its own thread raises it and records what it means
            planned.problem = exc
            continue
        if _permit(plan, route) is not None:
            groups[(route.name, sale_id)].append(nid)
    for (name, sale_id), nids in groups.items():
        _book(plan, plan.permits[name], sale_id, nids, services.settings.aws_io_threads)
    return plan


def _permit(plan: SendPlan, route: ProviderRoute) -> Permit | None:
    """The batch's leave to call this provider (asked once per batch), None while its circuit is
    not closed or cannot be read."""
    if route.name not in plan.permits:
        try:
            plan.permits[route.name] = (route, route.circuit.batch_permit())
        except DEPENDENCY_ERRORS as exc:
            log.warning("send batch: circuit of %s unreadable (%s): sends ask one by one", route.name, exc)
            plan.permits[route.name] = (route, None)
    return plan.permits[route.name][1]


def _book(
    plan: SendPlan, covered: tuple[ProviderRoute, Permit | None], sale_id: str, nids: list[str], ahead: int
) -> None:
    """A sale's sends at one provider share one book of slots, reserved ``ahead`` at a time."""
    route, permit = covered
    messages = [plan.planned[nid].checked() for nid in nids]
    book = SlotBook(route, sale_id, messages[0].campaign.rate_per_second, [m.parts for m in messages], ahead)
    for index, nid in enumerate(nids):
        plan.planned[nid].permit, plan.planned[nid].book, plan.planned[nid].index = permit, book, index


class SlotBook:
    """The slots of a batch's sends of one sale at one provider, in the batch's order, reserved
    ``ahead`` sends at a time (one request each): the batch never holds more of the sale's and
    the account's capacity ahead of its sends than the sends it runs at once (a batch that
    reserved all its slots at once held seconds of capacity, which a frozen worker wasted and
    which other workers' batches could not wait for)."""

    def __init__(self, route: ProviderRoute, sale_id: str, rate: float, parts: list[int], ahead: int) -> None:
        self._route, self._sale, self._rate, self._parts = route, sale_id, rate, parts
        self._ahead = max(1, ahead)
        self._slots: dict[int, float] = {}
        self._lock = threading.Lock()

    def slot(self, index: int, wait: float) -> float:
        """Send ``index``'s slot (``time.monotonic``), reserving it with the next ones not yet
        reserved if it has none; NotAttempted when not even its slot comes within ``wait``."""
        with self._lock:
            found = self._slots.pop(index, None)
            if found is not None:
                return found
            upto = min(len(self._parts), index + self._ahead)
            indexes = [i for i in range(index, upto) if i not in self._slots]
            slots = self._route.throttle.reserve(self._sale, self._rate, [self._parts[i] for i in indexes], wait)
            self._slots.update(zip(indexes, slots, strict=False))
            return self._slots.pop(index)
