"""A send batch's plan (stage 4, before its sends): each message checked, its provider chosen,
and, for each provider whose circuit is closed, one leave to call for the batch and one
reservation of the rate limits for each sale's sends.

Per send that leaves one Redis round trip (the last check: the account's second and the
circuit, just before the call) where checking the circuit, reserving the sale's and the
account's slots and telling the circuit of a success took four; successes are told together
when the batch ends (a failure tells them first). A send the plan could not cover (its
provider's circuit open or half-open, its slot beyond the wait, Redis unreachable) takes the
per-send path, as before: nothing is decided here that its own thread would decide otherwise.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dmd_tasks.domain.ids import split_notification_id
from dmd_tasks.infra.circuit import Permit
from dmd_tasks.infra.deadline import Deadline
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
    leave to call and its reserved slot (``time.monotonic``)."""

    route: ProviderRoute
    message: Message | None = None
    problem: BaseException | None = None
    permit: Permit | None = None
    slot: float | None = None

    def checked(self) -> Message:
        if self.problem is not None:
            raise self.problem
        assert self.message is not None
        return self.message


@dataclass
class SendPlan:
    planned: dict[str, Planned] = field(default_factory=dict)
    permits: dict[str, tuple[ProviderRoute, Permit | None]] = field(default_factory=dict)

    def order(self, owned: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """The sends in the order of their slots (those without one first): a thread waiting for a
        late slot must not hold back a send whose slot comes sooner."""
        return sorted(owned, key=lambda pair: self._slot(pair[0]))

    def _slot(self, nid: str) -> float:
        planned = self.planned.get(nid)
        return planned.slot if planned is not None and planned.slot is not None else float("-inf")

    def close(self) -> None:
        """The batch's successes told to each circuit (best effort)."""
        for route, permit in self.permits.values():
            if permit is not None:
                route.circuit.flush(permit)


def plan_batch(
    services: Services, owned: list[tuple[str, dict[str, Any]]], opted_out: set[str], deadline: Deadline
) -> SendPlan:
    """Check each message, choose its provider, and cover what can be covered: a batch's permit
    per provider (closed circuit), one reservation per provider and sale."""
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
    wait = min(services.settings.send_rate_wait_seconds, max(0.0, deadline.remaining))
    for (name, sale_id), nids in groups.items():
        _reserve(plan, plan.permits[name], sale_id, nids, wait)
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


def _reserve(
    plan: SendPlan, covered: tuple[ProviderRoute, Permit | None], sale_id: str, nids: list[str], wait: float
) -> None:
    """One reservation for a sale's sends at one provider; the slots that came in time are theirs."""
    route, permit = covered
    messages = [plan.planned[nid].checked() for nid in nids]
    try:
        slots = route.throttle.reserve(sale_id, messages[0].campaign.rate_per_second, [m.parts for m in messages], wait)
    except Exception as exc:  # no slot in time, Redis unreachable: each send asks on its own (and learns why)
        log.info("send batch: no reservation for %d sends of sale %s (%s)", len(nids), sale_id, exc)
        return
    for nid, slot in zip(nids, slots, strict=False):
        plan.planned[nid].permit, plan.planned[nid].slot = permit, slot
