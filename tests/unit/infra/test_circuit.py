"""The provider circuit in the session's Redis: one circuit per test (its own provider name)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from dmd_tasks.infra.circuit import CircuitSettings, Permit, ProviderCircuit, ProviderPaused


def new_circuit(settings: Any, streak_failures: int = 3) -> ProviderCircuit:
    config = CircuitSettings(
        window_seconds=30,
        bucket_seconds=5,
        min_calls=4,
        error_ratio=0.5,
        open_seconds=0.5,
        streak_failures=streak_failures,
    )
    return ProviderCircuit(redis.Redis.from_url(settings.redis_url), f"test{uuid.uuid4().hex[:8]}", config)


@pytest.fixture()
def circuit(settings: Any, stack: Any) -> ProviderCircuit:
    return new_circuit(settings)


def test_failures_below_the_ratio_keep_it_closed(settings: Any, stack: Any) -> None:
    circuit = new_circuit(settings, streak_failures=1000)  # the ratio alone
    for _ in range(10):
        circuit.succeeded(circuit.before_call())
    for _ in range(9):
        assert circuit.failed(circuit.before_call()) is False  # 9 of 19 failed: under half
    assert circuit.state() == "closed"
    assert circuit.failed(circuit.before_call()) is True  # 10 of 20: it opens
    assert circuit.state() == "open"


def test_failures_while_most_calls_fail_are_the_providers_before_the_circuit_opens(circuit: ProviderCircuit) -> None:
    for _ in range(3):
        assert circuit.failed(circuit.before_call()) is True  # most calls fail: not this message's fault
        assert circuit.state() == "closed"  # but fewer than min_calls: not open yet
    assert circuit.failed(circuit.before_call()) is True
    assert circuit.state() == "open"


def test_failures_in_a_row_are_the_providers_while_the_window_still_looks_healthy(circuit: ProviderCircuit) -> None:
    """The first seconds of an outage: the window still holds the successes from before, but
    calls now fail one after the other; a message retried quickly must not spend every attempt."""
    for _ in range(20):
        circuit.succeeded(circuit.before_call())
    assert circuit.failed(circuit.before_call()) is False  # one failure: the message's
    assert circuit.failed(circuit.before_call()) is False
    assert circuit.failed(circuit.before_call()) is True  # the third in a row: the provider's
    assert circuit.state() == "closed"  # 3 of 23 failed, 3 in a row: not open yet
    circuit.succeeded(circuit.before_call())  # a success ends the streak
    assert circuit.failed(circuit.before_call()) is False


def test_min_calls_failed_in_a_row_open_it_whatever_the_window_holds(circuit: ProviderCircuit) -> None:
    """A provider that dies after a busy minute: its window is full of successes, and the failover
    takes its traffic away as its error ratio grows, so the ratio alone would open the circuit only
    once those successes aged out (and traffic came back to fail again)."""
    for _ in range(40):
        circuit.succeeded(circuit.before_call())
    for _ in range(3):
        circuit.failed(circuit.before_call())
    assert circuit.state() == "closed"  # 3 of 43 failed, 3 in a row
    assert circuit.failed(circuit.before_call()) is True  # the 4th (min_calls) in a row opens it
    assert circuit.state() == "open"
    assert circuit.window_counts() == (40, 4)  # the ratio (1 in 11) did not


def test_an_open_circuit_refuses_calls_then_lets_one_probe_at_a_time(circuit: ProviderCircuit) -> None:
    for _ in range(4):
        assert circuit.failed(circuit.before_call()) is True
    with pytest.raises(ProviderPaused) as paused:
        circuit.before_call()
    assert 0 < (paused.value.retry_after_seconds or 0) <= 0.5

    time.sleep(0.6)
    assert circuit.state() == "half-open"
    probe = circuit.before_call()
    assert probe.probe
    with pytest.raises(ProviderPaused):  # one probe at a time
        circuit.before_call()
    # a failed probe opens it again; after the pause a new probe that succeeds closes it
    assert circuit.failed(probe) is True
    assert circuit.state() == "open"
    time.sleep(0.6)
    probe = circuit.before_call()
    assert probe.probe
    circuit.succeeded(probe)
    assert circuit.state() == "closed"
    assert not circuit.before_call().probe


def test_a_429_pauses_every_caller_for_its_retry_after_then_sending_resumes(circuit: ProviderCircuit) -> None:
    permit = circuit.before_call()
    assert circuit.throttled(permit, 0.2) == 1.0  # at least a second
    assert circuit.state() == "open"
    with pytest.raises(ProviderPaused):
        circuit.before_call()
    time.sleep(1.1)
    assert circuit.state() == "closed"  # the provider answered: no probing, the rate limits pace us
    assert not circuit.before_call().probe


def test_a_probe_that_made_no_call_gives_its_turn_back(circuit: ProviderCircuit) -> None:
    for _ in range(4):
        circuit.failed(circuit.before_call())
    time.sleep(0.6)
    probe = circuit.before_call()
    assert probe.probe
    circuit.release(probe)  # e.g. no rate-limit slot in time
    assert circuit.before_call().probe  # the next sender probes at once, not after the probe's timeout


@pytest.mark.stack  # a real socket: a connection refused on loopback
def test_a_success_is_recorded_best_effort_when_redis_is_unreachable() -> None:
    """The provider accepted the message: a Redis failure while recording it must not turn the
    send into an error (it would be retried, and sent again)."""
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    circuit = ProviderCircuit(unreachable, "test-unreachable", CircuitSettings())
    circuit.succeeded(Permit(probe=False, token="t"))  # no exception


def test_a_batchs_successes_are_told_together_and_before_its_failure(circuit: ProviderCircuit) -> None:
    # Given a batch's leave to call, taken while the circuit is closed
    permit = circuit.batch_permit()
    assert permit is not None and permit.tally is not None and not permit.probe
    # Two failures in a row from elsewhere
    circuit.failed(circuit.before_call())
    circuit.failed(circuit.before_call())

    # When four of the batch's calls succeed, nothing is told yet
    for _ in range(4):
        circuit.succeeded(permit)
    assert circuit.window_counts() == (0, 2)
    # and a fifth fails: its successes are told first, and they ended the run of failures (told
    # after it, the failure would be the third in a row: the provider's)
    assert circuit.failed(permit) is False  # 1 in a row; 3 of 7 failed, under the ratio
    assert circuit.window_counts() == (4, 3)
    circuit.succeeded(permit)
    circuit.flush(permit)
    circuit.flush(permit)  # told once
    assert circuit.window_counts() == (5, 3)


def test_no_batch_leave_while_the_circuit_is_open_or_half_open(circuit: ProviderCircuit) -> None:
    for _ in range(4):
        circuit.failed(circuit.before_call())
    assert circuit.batch_permit() is None  # open
    time.sleep(0.6)
    assert circuit.batch_permit() is None  # half-open: a probe goes alone, through before_call
    probe = circuit.before_call()
    assert probe.probe  # the batch did not keep the probe's turn
