"""Beat's scheduler against this session's Redis: one beat ticks, a standby waits, a lost lock or a
Redis that does not answer is logged and ridden out, never raised out of a tick (beat would exit)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dmd_tasks.celery_app import app
from dmd_tasks.celery_app import beat as beat_module
from dmd_tasks.celery_app.beat import RETRY_SECONDS, DmdBeatScheduler
from dmd_tasks.ops.stack import free_port


@pytest.fixture()
def lock_key(settings, stack) -> Iterator[str]:
    key = f"test:beat-lock:{uuid.uuid4().hex[:8]}"
    yield key
    redis.Redis.from_url(settings.redis_url).delete(key)


def scheduler(lock_key: str, ticks: list[str]) -> DmdBeatScheduler:
    """A scheduler on ``lock_key`` whose RedBeat tick (the part that needs the lock) is recorded."""
    instance = DmdBeatScheduler(app=app, lazy=True, lock_key=lock_key, lock_timeout=30)

    def recorded_tick(*_: Any, **__: Any) -> float:
        # what RedBeat's tick does first
        instance.lock.extend(int(instance.lock_timeout))  # type: ignore[attr-defined]
        ticks.append(lock_key)
        return 1.0

    instance._redbeat_tick = recorded_tick
    return instance


@pytest.fixture(autouse=True)
def _record_redbeat_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    def tick(self: DmdBeatScheduler, *args: Any, **kwargs: Any) -> float:
        return float(self._redbeat_tick())

    monkeypatch.setattr(beat_module.RedBeatScheduler, "tick", tick)


def test_one_beat_ticks_and_the_standby_waits_until_the_lock_is_free(lock_key: str, settings) -> None:
    active_ticks: list[str] = []
    standby_ticks: list[str] = []
    active, standby = scheduler(lock_key, active_ticks), scheduler(lock_key, standby_ticks)

    assert active.tick() == 1.0
    assert standby.tick() == standby.max_interval  # the lock is held: nothing ticked
    assert (len(active_ticks), len(standby_ticks)) == (1, 0)

    # When the active beat dies (its lock expires), the standby takes over at its next tick
    redis.Redis.from_url(settings.redis_url).delete(lock_key)
    assert standby.tick() == 1.0
    assert len(standby_ticks) == 1


def test_a_beat_that_lost_its_lock_stands_by_instead_of_exiting(lock_key: str, settings) -> None:
    ticks: list[str] = []
    blocked = scheduler(lock_key, ticks)
    assert blocked.tick() == 1.0

    # Given the beat was blocked past its lock's timeout and another beat took the lock
    client = redis.Redis.from_url(settings.redis_url)
    client.set(lock_key, "another-beat", ex=30)

    # Then its tick does not raise: it drops the lock and waits as the standby
    assert blocked.tick() == RETRY_SECONDS
    assert blocked.lock is None
    assert blocked.tick() == blocked.max_interval
    assert len(ticks) == 1

    # and takes the lock again once it is free
    client.delete(lock_key)
    assert blocked.tick() == 1.0
    assert len(ticks) == 2


def test_a_redis_that_does_not_answer_is_ridden_out(lock_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks: list[str] = []
    beat = scheduler(lock_key, ticks)
    nobody = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(beat_module, "get_redis", lambda _app: nobody)

    assert beat.tick() == RETRY_SECONDS  # ConnectionError taking the lock: logged, not raised
    assert ticks == []


def restored_count() -> float:
    from dmd_tasks.infra.metrics import BEAT_SCHEDULE_RESTORED

    return float(BEAT_SCHEDULE_RESTORED._value.get())


def test_the_lock_holder_writes_back_a_schedule_redis_forgot(lock_key: str, settings) -> None:
    # Given a beat that wrote its static schedule, and a Redis that then restarted empty
    beat = scheduler(lock_key, [])
    beat.setup_schedule()
    conf = app.redbeat_conf  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.redis_url)
    keys = {name: beat.Entry.generate_key(app, name) for name in app.conf.beat_schedule}
    assert len(keys) == 3 and all(client.zscore(conf.schedule_key, key) is not None for key in keys.values())
    client.delete(conf.schedule_key, conf.statics_key, *keys.values())
    before = restored_count()

    # When it ticks (holding the lock), then every static entry is back, due within its interval
    # (as after a first start), and the restoration is counted
    assert beat.tick() == 1.0
    for name, key in keys.items():
        assert client.hexists(key, "definition")
        interval = float(app.conf.beat_schedule[name]["schedule"])
        assert float(client.zscore(conf.schedule_key, key)) <= time.time() + interval + 1  # type: ignore[arg-type]
    assert {m.decode() for m in client.smembers(conf.statics_key)} == set(keys)  # type: ignore[union-attr]
    assert restored_count() == before + 1

    # And a tick that finds it whole writes nothing; one entry lost alone comes back alone
    assert beat.tick() == 1.0
    assert restored_count() == before + 1
    client.zrem(conf.schedule_key, keys["reconcile-sales"])
    assert beat.tick() == 1.0
    assert client.zscore(conf.schedule_key, keys["reconcile-sales"]) is not None
    assert restored_count() == before + 2


def test_a_standby_beat_writes_no_schedule(lock_key: str, settings) -> None:
    active, standby = scheduler(lock_key, []), scheduler(lock_key, [])
    assert active.tick() == 1.0
    conf = app.redbeat_conf  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(conf.schedule_key)
    assert standby.tick() == standby.max_interval
    assert client.zcard(conf.schedule_key) == 0  # only the lock holder writes it


def test_a_resting_task_is_not_sent_until_its_rest_ends_or_work_wakes_it(lock_key: str, settings) -> None:
    from types import SimpleNamespace

    from dmd_tasks.infra.metrics import BEAT_RESTED
    from dmd_tasks.infra.wake import REST_KEY, Wake

    beat = scheduler(lock_key, [])
    sent: list[str] = []
    advanced: list[str] = []
    beat.apply_async = lambda entry, producer=None, advance=True, **_: sent.append(entry.task)  # type: ignore[method-assign]
    beat.reserve = lambda entry: advanced.append(entry.task)
    task = f"test.beat.idle.{uuid.uuid4().hex[:6]}"
    entry = SimpleNamespace(name="idle-entry", task=task, is_due=lambda: (True, 2.0))
    client = redis.Redis.from_url(settings.redis_url)
    wake = Wake(client)
    rested = BEAT_RESTED.labels("idle-entry")._value.get

    assert beat.maybe_due(entry) == 2.0  # no rest: sent
    now = time.time()
    wake.rest(task, now + 30, wake.epoch(), now)  # the task found no work
    before = rested()
    assert beat.maybe_due(entry) == 2.0
    beat.maybe_due(entry)
    # resting: not sent, its entry advanced (next due one interval on), counted
    assert (sent, advanced, rested()) == ([task], [task, task], before + 2)
    wake.wake("a sale written")
    beat.maybe_due(entry)
    assert sent == [task, task]  # woken: sent
    wake.rest(task, time.time() + 30, wake.epoch(), time.time())
    client.delete(REST_KEY.format(task=task))  # Redis forgot the rest: sent
    beat.maybe_due(entry)
    assert sent == [task, task, task]
    # an entry not due is neither sent nor advanced
    beat.maybe_due(SimpleNamespace(name="idle-entry", task=task, is_due=lambda: (False, 1.5)))
    assert (len(sent), len(advanced)) == (3, 2)
