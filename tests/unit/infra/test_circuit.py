"""The provider circuit in the session's Redis: one circuit per test (its own provider name)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from dmd_tasks.infra.circuit import CircuitSettings, ProviderCircuit, ProviderPaused


@pytest.fixture()
def circuit(settings: Any, stack: Any) -> ProviderCircuit:
    config = CircuitSettings(window_seconds=30, bucket_seconds=5, min_calls=4, error_ratio=0.5, open_seconds=0.5)
    return ProviderCircuit(redis.Redis.from_url(settings.redis_url), f"test{uuid.uuid4().hex[:8]}", config)


def test_failures_below_the_ratio_keep_it_closed(circuit: ProviderCircuit) -> None:
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
