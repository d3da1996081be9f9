"""The ``sent`` writes of a send batch, and its sends given back to ``scheduled``, gathered and
written 100 to a request.

A send that the provider accepted is recorded ``sending → sent`` with a write fenced by its
lease token. One write per SMS made the record the largest share of a notification's requests;
a batch's sends now wait a moment and go together (``NotificationRecords.mark_sent_many``):
when ``max_items`` are waiting, when the oldest has waited ``max_age_seconds`` (a delivery
receipt that comes before the write waits for it: keep the wait short), and when the batch
ends. Nothing is lost by waiting: until it is written the notification is ``sending`` under its
lease; a worker that dies with writes still waiting leaves the leases to expire, and the
reconciler sends those notifications again with the same idempotency key (or, at a provider
without one, makes them ``unconfirmed``: their call was recorded before it was made).

A write that finds the lease gone (the reconciler took it back: this worker was paused past
it) changes nothing: it is logged and counted, as a single write's refusal always was.

Sends that never reached the provider (the batch out of time, no rate-limit slot in time, the
provider paused) go back to ``scheduled`` the same way (``back``): a batch that a slow table held
up past its time gives back its unsent notifications in a request or two, where a write each
took longer than the batch had left (soft time limits, with AWS 300 ms slow). Each one written
is added to the ``again`` list it came with, with when it is due (its send task is published
after the flush).
"""

from __future__ import annotations

import logging
import threading
import time

from dmd_tasks.store.notifications import Back, NotificationRecords, Sent

log = logging.getLogger(__name__)


class SentRecords:
    def __init__(self, notifications: NotificationRecords, max_items: int = 25, max_age_seconds: float = 0.2) -> None:
        self._notifications = notifications
        self._max_items = max_items
        self._max_age = max_age_seconds
        self._lock = threading.Lock()
        self._waiting: list[tuple[Sent, bool]] = []
        self._backs: list[tuple[Back, list[tuple[str, float]] | None]] = []
        self._oldest = 0.0
        #: sends whose ``sent`` write found the lease gone (none of their writes changed anything)
        self.lost = 0

    def add(self, sent: Sent, idempotent: bool) -> None:
        """Record ``sent`` (``idempotent``: the provider deduplicates, see ``_write``)."""
        with self._lock:
            if not self._waiting and not self._backs:
                self._oldest = time.monotonic()
            self._waiting.append((sent, idempotent))
        self.flush(due_only=True)

    def back(self, back: Back, again: list[tuple[str, float]] | None) -> None:
        """Give ``back`` to ``scheduled`` (no attempt spent), with the batch's others; once written,
        it is added to ``again`` (notification id, when due)."""
        with self._lock:
            if not self._waiting and not self._backs:
                self._oldest = time.monotonic()
            self._backs.append((back, again))
        self.flush(due_only=True)

    def flush(self, due_only: bool = False) -> None:
        """Write what is waiting (``due_only``: only if enough waits, or long enough)."""
        with self._lock:
            waiting = len(self._waiting) + len(self._backs)
            if not waiting:
                return
            if due_only and waiting < self._max_items and time.monotonic() - self._oldest < self._max_age:
                return
            batch, self._waiting = self._waiting, []
            backs, self._backs = self._backs, []
        if batch:
            self._write(batch)
        if backs:
            self._give_back(backs)

    def _give_back(self, backs: list[tuple[Back, list[tuple[str, float]] | None]]) -> None:
        written = {id(b) for b in self._notifications.mark_retry_many([b for b, _ in backs])}
        for back, again in backs:
            if id(back) in written and again is not None:
                again.append((f"{back.sale_id}:{back.fan_id}", back.not_before))

    def _write(self, batch: list[tuple[Sent, bool]]) -> None:
        written = {id(s) for s in self._notifications.mark_sent_many([s for s, _ in batch])}
        for sent, idempotent in batch:
            if id(sent) in written:
                continue
            nid = f"{sent.sale_id}:{sent.fan_id}"
            if not idempotent and self._notifications.confirm_sent(
                sent.sale_id, sent.fan_id, sent.message_id, time.time()
            ):
                continue  # the reconciler found the lease expired and made it unconfirmed: the answer settles it
            # the lease expired and the reconciler took it back (its re-send uses the same
            # idempotency key), or the provider's final event settled it first
            log.warning("notification %s changed before it was marked sent (lease taken back, or settled)", nid)
            with self._lock:
                self.lost += 1
