"""The SMS provider: ``POST /sms/v1/messages`` and a Kinesis stream of delivery statuses.

- Bearer auth; ``Idempotency-Key`` required: a repeated key returns the first result
  and sends nothing new.
- Faults (latency, 5xx, timeouts, a rate limit answered with 429 + Retry-After) from
  ``Faults``; only accepted messages count.
- After ``status_delay_ms`` each accepted message gets a delivery status in the Kinesis
  stream: ``delivered``, ``undelivered`` or ``failed`` by the configured rates; some
  duplicated, some followed by a stale intermediate status (out of order); some fans
  reply ``STOP`` (an inbound event).
- It counts every distinct message accepted per recipient: a recipient with two is a
  fan who got the same notification twice, the one thing that must never happen.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from simulators.faults import SLOW, Faults, WindowPeak

log = logging.getLogger(__name__)

#: acceptance times kept per sale (for the benchmarks' rates; a bigger sale keeps its first ones)
SALE_TIMES_KEPT = 100_000
E164 = re.compile(r"^\+[1-9]\d{7,14}$")


@dataclass
class StatusBehaviour:
    status_delay_ms: float = 200.0
    undelivered_rate: float = 0.03
    failed_rate: float = 0.02
    duplicate_status_rate: float = 0.05
    out_of_order_rate: float = 0.05
    stop_reply_rate: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        for key in vars(self):
            if key in values:
                setattr(self, key, float(values[key]))

    def final_status(self) -> str:
        """A message's final status, drawn by the configured rates."""
        roll = random.random()
        if roll < self.undelivered_rate:
            return "undelivered"
        return "failed" if roll < self.undelivered_rate + self.failed_rate else "delivered"


class SmsSimulator:
    def __init__(self, api_key: str, emitter: StatusEmitter | None) -> None:
        self.api_key = api_key
        self.faults = Faults()
        self.behaviour = StatusBehaviour()
        self.emitter = emitter
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[str, Any]] = {}
        self._per_recipient: Counter[str] = Counter()
        self._per_sale: dict[str, Counter[str]] = defaultdict(Counter)
        self._sale_span: dict[str, list[float]] = {}  # sale → [first, last] acceptance (epoch seconds)
        #: sale → when each message was accepted (the first SALE_TIMES_KEPT; the benchmarks' rates)
        self._sale_times: dict[str, list[float]] = defaultdict(list)
        #: acceptances, by the time their request arrived (as the rate limit counts them)
        self._accepted = WindowPeak()
        self._counters: Counter[str] = Counter()
        self._not_before: dict[str, float] = {}
        self._unkeyed = 0  # messages accepted through End User Messaging (``record_unkeyed``)

    # ---- configuration and counters -----------------------------------------------------------

    def configure(self, values: dict[str, Any]) -> None:
        self.faults.update(values)
        self.behaviour.update(values)

    def public_config(self) -> dict[str, Any]:
        return {**self.faults.public(), **vars(self.behaviour)}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "accepted": len(self._by_key) + self._unkeyed,
                "recipients": len(self._per_recipient),
                "duplicates": sum(n - 1 for n in self._per_recipient.values() if n > 1),
                "max_accepted_per_second": self._accepted.peak,
                "max_requests_per_second": self.faults.max_requests_per_second,
                **dict(self._counters),
                **{f"responses_{k}": v for k, v in self.faults.counters.items()},
            }

    def sale_stats(self, sale_id: str, times: bool = False) -> dict[str, Any]:
        """A sale's messages; with ``times``, when each was accepted (epoch seconds, the first
        SALE_TIMES_KEPT)."""
        with self._lock:
            per_recipient = self._per_sale.get(sale_id, Counter())
            first, last = self._sale_span.get(sale_id, (None, None))
            return {
                **({"accepted_times": list(self._sale_times.get(sale_id, []))} if times else {}),
                "accepted": sum(per_recipient.values()),
                "recipients": len(per_recipient),
                "duplicates": sum(n - 1 for n in per_recipient.values() if n > 1),
                "first_accepted_at": first,
                "last_accepted_at": last,
            }

    def recipient_count(self, phone: str) -> int:
        """Distinct messages accepted for one recipient."""
        with self._lock:
            return self._per_recipient.get(phone, 0)

    def reset(self) -> None:
        with self._lock:
            self._by_key.clear()
            self._unkeyed = 0
            self._per_recipient.clear()
            self._per_sale.clear()
            self._sale_span.clear()
            self._sale_times.clear()
            self._accepted.clear()
            self._counters.clear()
            self._not_before.clear()
            self.faults = Faults()
            self.behaviour = StatusBehaviour()

    # ---- the API --------------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        bp = Blueprint("sms", __name__)

        @bp.post("/sms/v1/messages")
        def send() -> Any:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return jsonify(error="unauthorized"), 401
            arrived_at = self.faults.arrived()
            key = request.headers.get("Idempotency-Key", "")
            body = request.get_json(silent=True)
            if not key or len(key) > 200:
                return jsonify(error="missing_idempotency_key"), 400
            if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"]:
                return jsonify(error="invalid_body"), 400
            to = body.get("to")
            if not isinstance(to, str) or not E164.match(to):
                return jsonify(error="invalid_recipient", message="recipient is not an E.164 number"), 400
            with self._lock:
                first = self._by_key.get(key)
            if first is not None:
                self._count("idempotent_replays")
                return jsonify({**first, "idempotent_replay": True}), 200
            self._check_retry_after(key)
            failure = self.faults.apply(timeouts_accept=True, arrived_at=arrived_at)
            if failure == SLOW:
                response = self._accept(key, to, arrived_at)
                time.sleep(self.faults.timeout_ms / 1000)  # accepted, but the client has given up by now
                return response
            if isinstance(failure, tuple):
                status, headers = failure
                if status == 429:
                    with self._lock:
                        self._not_before[key] = time.monotonic() + float(headers.get("Retry-After", 1))
                return Response(
                    json.dumps({"error": "rate_limited" if status == 429 else "provider_error"}),
                    status=status,
                    headers=headers,
                    mimetype="application/json",
                )
            return self._accept(key, to, arrived_at)

        return bp

    def _check_retry_after(self, key: str) -> None:
        """Count a request that came back sooner than the Retry-After it was given."""
        with self._lock:
            not_before = self._not_before.pop(key, None)
            if not_before is not None and time.monotonic() < not_before - 0.05:
                self._counters["retry_after_violations"] += 1

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def _record(self, reference: str, to: str, arrived_at: float) -> None:
        """Count one message handed on to the fan (the caller holds the lock). ``reference``
        starts with the sale's id (``sale:fan``, the pipeline's notification id)."""
        self._per_recipient[to] += 1
        sale = reference.split(":", 1)[0]
        self._per_sale[sale][to] += 1
        span = self._sale_span.setdefault(sale, [time.time(), 0.0])
        span[1] = time.time()
        if len(self._sale_times[sale]) < SALE_TIMES_KEPT:
            self._sale_times[sale].append(span[1])
        self._accepted.add(arrived_at)

    def record_unkeyed(self, reference: str, to: str, arrived_at: float) -> None:
        """A message another face of the provider accepted with no idempotency key (End User
        Messaging): counted with these, so that a fan messaged by both is a duplicate."""
        with self._lock:
            self._unkeyed += 1
            self._record(reference, to, arrived_at)

    def _accept(self, key: str, to: str, arrived_at: float) -> tuple[Response, int]:
        with self._lock:
            first = self._by_key.get(key)
            if first is not None:  # a concurrent request with the same key won
                self._counters["idempotent_replays"] += 1
                return jsonify({**first, "idempotent_replay": True}), 200
            result = {"message_id": f"SM{uuid.uuid4().hex}", "status": "accepted", "to": to}
            self._by_key[key] = result
            self._record(key, to, arrived_at)
        if self.emitter is not None:
            self._plan_statuses(result["message_id"], to, key)
        return jsonify({**result, "idempotent_replay": False}), 202

    def _plan_statuses(self, message_id: str, to: str, reference: str) -> None:
        b = self.behaviour
        final = b.final_status()
        due = time.time() + b.status_delay_ms / 1000
        event = {"type": "status", "message_id": message_id, "status": final, "reference": reference}
        assert self.emitter is not None
        self.emitter.schedule(due, event)
        if random.random() < b.duplicate_status_rate:
            self.emitter.schedule(due + 0.05, dict(event))
        if random.random() < b.out_of_order_rate:
            self.emitter.schedule(
                due + 0.02, {"type": "status", "message_id": message_id, "status": "queued", "reference": reference}
            )
        if final == "delivered" and random.random() < b.stop_reply_rate:
            self.emitter.schedule(due + 0.1, {"type": "inbound", "sender": to, "body": "STOP"})


class EventEmitter:
    """Delivers provider events when they fall due, in batches, on a thread of its own; what a
    batch goes to (``_deliver``) is the subclass's."""

    batch_size = 500
    name = "events"

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self.emitted: Counter[str] = Counter()
        threading.Thread(target=self._run, name=f"{self.name}-emitter", daemon=True).start()

    def schedule(self, due: float, event: dict[str, Any]) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, event))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.time():
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.time())
                    self._cond.wait(timeout=timeout if timeout is not None else 1.0)
                batch: list[Any] = []
                while self._heap and self._heap[0][0] <= time.time() and len(batch) < self.batch_size:
                    batch.append(heapq.heappop(self._heap)[2])
            self._put(batch)

    def _put(self, events: list[dict[str, Any]]) -> None:
        """Deliver ``events``, again and again until every one is taken (the emulator restarting)."""
        delay = 0.1
        while events:
            try:
                failed = self._deliver(events)
            except Exception:  # the emulator restarting, say: keep the events, try again
                log.exception("%s: delivery failed; retrying", self.name)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            left = {id(e) for e in failed}
            for e in events:
                if id(e) not in left:
                    self.emitted[self._label(e)] += 1
            events = failed
            if events:
                time.sleep(delay)

    def _deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Deliver a batch; returns the events that were not taken."""
        raise NotImplementedError

    @staticmethod
    def _label(event: dict[str, Any]) -> str:
        return str(event.get("status") or event.get("type", "?"))


class StatusEmitter(EventEmitter):
    """Puts the HTTP provider's events into the Kinesis status stream (PutRecords, 500 a call)."""

    name = "status"

    def __init__(self, kinesis: Any, stream_name: str) -> None:
        self._kinesis = kinesis
        self._stream = stream_name
        super().__init__()

    def _deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stamp = datetime.now(UTC).isoformat()
        records = [
            {
                "Data": json.dumps({**e, "timestamp": stamp}).encode(),
                "PartitionKey": e.get("message_id") or e.get("sender") or "x",
            }
            for e in events
        ]
        response = self._kinesis.put_records(StreamName=self._stream, Records=records)
        return [e for e, res in zip(events, response["Records"], strict=True) if "ErrorCode" in res]
