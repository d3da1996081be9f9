"""Beat's idle gate: ticks that cost nothing while there is no work.

Beat sends each of its tasks every few seconds. With nothing to do, each tick is still an SQS
round trip (send, receive, delete) and the task's own index reads. So a beat task that finds
no work says until when it needs no tick (``rest``), stamped with the *work epoch* it read
before it looked. Whatever makes work for beat's tasks bumps the epoch (``wake``): a sale
written (the demand bridge sees it in the table's stream), a sale claimed (it becomes active).
Beat skips an entry's tick while its rest holds: the rest has not ended and the epoch has not
moved since the task looked. A task rests at most ``beat_idle_tick_seconds``, so an idle
pipeline still looks around that often whatever it missed.

Everything fails open: a key Redis lost (restarted empty) or Redis unreachable means tick, and a
task that cannot write its rest simply gets its next tick. The race between a task that looks,
finds nothing and rests, and a writer that makes work meanwhile is closed by the epoch: the
writer's bump comes after the task read the epoch, so the rest does not match it.

Keys (one deployment): ``dmd:wake:epoch`` (a counter) and ``dmd:wake:rest:{task}``
(``until|epoch``, expiring with the rest).

A stream's doorbell (``Doorbell``) does the same for a bridge: the status bridge reads an idle
stream rarely (``bridge_doorbell_max_sleep_seconds``) and the send worker rings after each batch
it sent, so the receipts are read as soon as they come; the bridge looks at the doorbell (a
Redis GET, no AWS request) every ``bridge_doorbell_check_seconds``. Without Redis the bridge
falls back to its plain idle backoff (``bridge_idle_max_sleep_seconds``): late, never lost.
Key: ``dmd:wake:stream:{stream}`` (a counter).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS, describe

log = logging.getLogger(__name__)

EPOCH_KEY = "dmd:wake:epoch"
DOORBELL_KEY = "dmd:wake:stream:{stream}"
REST_KEY = "dmd:wake:rest:{task}"
#: the epoch as read when its key is missing (never bumped, or Redis lost it)
NO_EPOCH = "-"


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Wake:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def epoch(self) -> str:
        """The work epoch now (read before a task looks for work); NO_EPOCH when unreadable."""
        try:
            return _text(self._redis.get(EPOCH_KEY)) or NO_EPOCH
        except DEPENDENCY_ERRORS:
            return NO_EPOCH

    def wake(self, why: str) -> bool:
        """New work for beat's tasks: every rest taken before now ends."""
        try:
            self._redis.incr(EPOCH_KEY)
            return True
        except DEPENDENCY_ERRORS as exc:
            log.warning(
                "wake (%s): Redis unavailable (%s); beat's tasks see the work at their next idle tick",
                why,
                describe(exc),
            )
            return False

    def rest(self, task: str, until: float, epoch: str, now: float) -> None:
        """``task`` found no work (having read ``epoch`` first): no tick is needed before ``until``."""
        if until <= now:
            return
        try:
            self._redis.set(REST_KEY.format(task=task), f"{until!r}|{epoch}", px=int((until - now) * 1000) + 1)
        except DEPENDENCY_ERRORS as exc:
            log.debug("rest of %s not recorded (%s): it simply ticks", task, describe(exc))

    def resting(self, tasks: Iterable[str], now: float) -> set[str]:
        """The tasks whose rest holds at ``now`` (one round trip). Raises Redis's errors: beat
        cannot tick without Redis anyway."""
        names = list(tasks)
        if not names:
            return set()
        epoch, *rests = self._redis.mget([EPOCH_KEY, *(REST_KEY.format(task=t) for t in names)])
        current = _text(epoch) or NO_EPOCH
        out: set[str] = set()
        for name, rest in zip(names, rests, strict=True):
            until, _, at = (_text(rest) or "").partition("|")
            try:
                if at == current and float(until) > now:
                    out.add(name)
            except ValueError:
                continue
        return out


class Doorbell:
    """Rung by whatever makes records for ``stream``; read by its bridge while the stream is idle."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self._redis = client
        self._key = DOORBELL_KEY.format(stream=stream)

    def ring(self) -> None:
        """New records are on their way (fails open: the bridge reads them at its next idle poll)."""
        try:
            self._redis.incr(self._key)
        except DEPENDENCY_ERRORS as exc:
            log.debug("doorbell %s not rung (%s): the bridge reads at its idle pace", self._key, describe(exc))

    def read(self) -> str | None:
        """The doorbell's count now (NO_EPOCH when never rung or forgotten); None when Redis is
        unreachable (the reader then keeps to its plain idle backoff)."""
        try:
            return _text(self._redis.get(self._key)) or NO_EPOCH
        except DEPENDENCY_ERRORS:
            return None
