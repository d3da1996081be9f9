"""Beat's scheduler: RedBeat, made to ride out any dependency stall.

RedBeat keeps the schedule in Redis behind a lock, so two beats can run: one ticks, the
other waits for the lock. As it comes, a beat *exits* when Redis stalls (a TimeoutError
out of ``tick``) or when it was blocked past its lock's timeout (``LockNotOwnedError``
when it extends the lock), and a process runner (honcho, ``dmd demo``) then stops every
process. ``DmdBeatScheduler`` never lets an error out of a tick:

- it loses the lock (it was blocked, another beat took over): it logs, becomes the
  standby, and takes the lock again when the other beat lets it expire;
- Redis unreachable or frozen: it logs and tries again a few seconds later (its Redis
  calls time out after ``redbeat_redis_options``' socket timeouts, never hang);
- anything else in a tick: logged with its traceback, and the next tick runs.

A standby beat (one that does not hold the lock) ticks nothing; it tries to take the lock
every loop, so it takes over at most lock timeout + one loop after the active one died.

Redis is a cache of the schedule, not its source: RedBeat writes the static schedule
(``beat_schedule``) into Redis only when beat starts, so a Redis that restarts empty (a node
replaced, no persistence) would leave the beat holding the lock with nothing to tick, silently.
The beat that holds the lock checks every tick that each static entry is still there (one
pipelined round trip) and writes back what is missing (``dmd_beat_schedule_restored_total``);
each is due one interval later, as after a first start. Every tick sent is counted by entry
(``dmd_beat_sent_total``): a lock holder that sends none for a few intervals is an alert.

Idle ticks cost nothing: a task that found no work rests (``dmd_tasks.infra.wake``) and beat
does not send it while the rest holds; each tick skipped so is counted too
(``dmd_beat_rested_total``), so the alert above is on ticks neither sent nor rested.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError

from dmd_tasks.infra.dependencies import DEPENDENCY_ERRORS, describe
from dmd_tasks.infra.metrics import BEAT_LOCK_HELD, BEAT_RESTED, BEAT_SCHEDULE_RESTORED, BEAT_SENT
from dmd_tasks.infra.wake import Wake

log = logging.getLogger(__name__)

#: How soon a beat tries again after a tick that failed.
RETRY_SECONDS = 2.0


class DmdBeatScheduler(RedBeatScheduler):
    def setup_schedule(self) -> None:
        """Write the static schedule to Redis, waiting for Redis if it is down at start."""
        while True:
            try:
                super().setup_schedule()
                return
            except DEPENDENCY_ERRORS as exc:
                log.error("beat: cannot write the schedule to Redis yet (%s); retrying", describe(exc))
                time.sleep(RETRY_SECONDS)

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            if self.lock_key and not self._hold_lock():
                BEAT_LOCK_HELD.labels("beat").set(0)
                return float(self.max_interval)  # standby
            BEAT_LOCK_HELD.labels("beat").set(1)
            self._restore_schedule()
            return float(super().tick(min=min, **kwargs))
        except LockError as exc:
            log.warning("beat: lost its lock (%s); standing by until it can take it again", exc)
            BEAT_LOCK_HELD.labels("beat").set(0)
            self.lock = None
        except DEPENDENCY_ERRORS as exc:
            log.error("beat: tick failed, a dependency is unavailable (%s); retrying", describe(exc))
        except Exception:
            log.exception("beat: tick failed; retrying")
        return RETRY_SECONDS

    def _restore_schedule(self) -> None:
        """Write back the static entries Redis no longer has (its definition or its place in the
        schedule), keeping what it still has."""
        static = self.app.redbeat_conf.schedule
        if not static:
            return
        conf = self.app.redbeat_conf
        names = list(static)
        keys = [self.Entry.generate_key(self.app, name) for name in names]
        with get_redis(self.app).pipeline() as pipe:
            pipe.zmscore(conf.schedule_key, keys)
            for key in keys:
                pipe.hexists(key, "definition")
            scores, *defined = pipe.execute()
        missing = [n for n, score, ok in zip(names, scores, defined, strict=True) if score is None or not ok]
        if not missing:
            return
        self.update_from_dict({name: static[name] for name in missing})
        get_redis(self.app).sadd(conf.statics_key, *missing)
        BEAT_SCHEDULE_RESTORED.inc()
        log.warning("beat: %s missing from Redis (restarted empty?); written again", ", ".join(missing))

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        """RedBeat's: send a due entry's task; but a task that rests (it found no work, and
        nothing woke it since) is not sent: its entry is advanced as if it had been. Whatever
        goes wrong asking (Redis) means send."""
        is_due, next_time_to_run = entry.is_due()
        if not is_due or not self._resting(entry):
            return super().maybe_due(entry, **kwargs)
        self.reserve(entry)  # its next run is one interval from now, as after a send
        BEAT_RESTED.labels(entry.name).inc()
        return next_time_to_run

    def _resting(self, entry: Any) -> bool:
        try:
            return entry.task in Wake(get_redis(self.app)).resting([entry.task], time.time())
        except Exception as exc:
            log.debug("beat: could not read the rest of %s (%s); sending it", entry.name, describe(exc))
            return False

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        BEAT_SENT.labels(entry.name).inc()
        return result

    def _hold_lock(self) -> bool:
        """Whether this beat holds the lock, taking it if it is free (never blocking)."""
        if self.lock is not None:
            return True
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # as RedBeat does: extend *to*
        if not lock.acquire(blocking=False):
            return False
        log.info("beat: took the lock; this beat now runs the schedule")
        self.lock = lock
        return True

    def close(self) -> None:
        try:
            super().close()
        except Exception as exc:  # releasing a lock we lost, Redis down: exit anyway
            log.warning("beat: could not release its lock on exit (%s)", describe(exc))
