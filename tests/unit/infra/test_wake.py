"""Beat's idle gate against this session's Redis: a rest holds until its time or the next wake,
and whatever Redis forgot means tick."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmd_tasks.infra.wake import EPOCH_KEY, REST_KEY, Wake

TASK = "test.wake.task"


def wake_of(settings: Any) -> Wake:
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(REST_KEY.format(task=TASK))
    return Wake(client)


def test_a_rest_holds_until_its_end(settings: Any, stack: Any) -> None:
    wake, now = wake_of(settings), time.time()
    wake.rest(TASK, now + 30, wake.epoch(), now)
    assert wake.resting([TASK, "other.task"], now + 29) == {TASK}
    assert wake.resting([TASK], now + 31) == set()


def test_work_made_after_the_task_looked_ends_its_rest(settings: Any, stack: Any) -> None:
    wake, now = wake_of(settings), time.time()
    epoch = wake.epoch()  # the task reads the epoch, then looks for work...
    assert wake.wake("a sale written")  # ...while a sale is written...
    wake.rest(TASK, now + 30, epoch, now)  # ...and it rests, having found none
    assert wake.resting([TASK], now) == set()  # the next tick is sent all the same
    wake.rest(TASK, now + 30, wake.epoch(), now)  # that tick looks again and rests
    assert wake.resting([TASK], now) == {TASK}
    wake.wake("a sale claimed")
    assert wake.resting([TASK], now) == set()


def test_a_redis_that_forgot_everything_means_tick(settings: Any, stack: Any) -> None:
    wake, now = wake_of(settings), time.time()
    wake.wake("some work")
    wake.rest(TASK, now + 30, wake.epoch(), now)
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(REST_KEY.format(task=TASK))
    assert wake.resting([TASK], now) == set()
    # the epoch alone lost: a rest stamped with the old epoch no longer holds
    wake.rest(TASK, now + 30, wake.epoch(), now)
    client.delete(EPOCH_KEY)
    assert wake.resting([TASK], now) == set()


def test_a_rest_that_ends_at_once_or_in_the_past_is_not_written(settings: Any, stack: Any) -> None:
    wake, now = wake_of(settings), time.time()
    wake.rest(TASK, now, wake.epoch(), now)
    assert wake.resting([TASK], now - 1) == set()
    assert redis.Redis.from_url(settings.redis_url).get(REST_KEY.format(task=TASK)) is None


@pytest.mark.stack  # it opens a socket (to a port nobody listens on)
def test_an_unreachable_redis_reads_as_no_epoch_and_wakes_nobody() -> None:
    gone = Wake(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    assert gone.epoch() == "-"
    assert gone.wake("a sale written") is False
    gone.rest(TASK, time.time() + 30, "-", time.time())  # no error: the task simply gets its tick
