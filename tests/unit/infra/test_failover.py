"""Two providers' weights from their circuits (the session's Redis; each test's circuits of its own)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from dmd_tasks.domain.providers import EUM, HTTP, Capabilities
from dmd_tasks.infra import failover
from dmd_tasks.infra.circuit import CircuitSettings, Permit, ProviderCircuit
from dmd_tasks.infra.failover import PROBE_SHARE, ProviderRoute, ProviderRouter
from dmd_tasks.infra.ratelimit import SmsThrottle

MIN_CALLS = 4


class Named:
    """A provider that is never called here: only its name matters."""

    def __init__(self, capabilities: Capabilities) -> None:
        self.capabilities = capabilities

    def send(self, to: str, body: str, *, notification_id: str, validity_seconds: float | None = None) -> str:
        raise AssertionError("no call in these tests")


def route(settings: Any, capabilities: Capabilities, weight: float, cap: float) -> ProviderRoute:
    client = redis.Redis.from_url(settings.redis_url)
    account = f"test{uuid.uuid4().hex[:8]}"
    circuit = ProviderCircuit(
        client,
        account,
        CircuitSettings(window_seconds=30, bucket_seconds=5, min_calls=MIN_CALLS, error_ratio=0.5, open_seconds=30),
    )
    return ProviderRoute(Named(capabilities), SmsThrottle(client, account, cap), circuit, cap, weight)


@pytest.fixture(autouse=True)
def fresh_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failover, "REFRESH_SECONDS", 0.0)  # every read sees the circuits as they are


def router(settings: Any, http_weight: float, eum_weight: float) -> ProviderRouter:
    routes = [route(settings, HTTP, http_weight, 20), route(settings, EUM, eum_weight, 10)]
    return ProviderRouter(routes, min_calls=MIN_CALLS, error_ratio=0.5)


def calls(r: ProviderRoute, ok: int, failed: int) -> None:
    """Outcomes of calls made together (each with a permit taken before the circuit opened), the
    failures spread among the successes as a provider failing some calls spreads them."""
    total = ok + failed
    for n in range(total):
        permit = Permit(probe=False, token=uuid.uuid4().hex)
        if (n + 1) * failed // total > n * failed // total:
            r.circuit.failed(permit)
        else:
            r.circuit.succeeded(permit)


def test_healthy_providers_split_by_their_resting_weights(settings: Any, stack: Any) -> None:
    both = router(settings, 0.5, 0.5)
    assert both.weights() == {"http": 0.5, "eum": 0.5}
    picks = Counter(both.choose().name for _ in range(2000))
    assert 850 < picks["http"] < 1150  # binomial(2000, 0.5): outside this range with odds below 1e-11
    assert both.capacity() == 30


def test_a_provider_failing_more_loses_weight_and_an_open_circuit_all_of_it(settings: Any, stack: Any) -> None:
    both = router(settings, 0.5, 0.5)
    http = both.routes["http"]
    # a quarter of its calls failing, half the circuit's ratio: half its weight goes to the other
    calls(http, ok=12, failed=4)
    assert both.weights() == pytest.approx({"http": 0.25, "eum": 0.75})
    # failing most calls: its circuit opens, and every send goes to the other (within its own cap)
    calls(http, ok=0, failed=20)
    assert http.circuit.state() == "open"
    assert both.weights() == {"http": 0.0, "eum": 1.0}
    assert {both.choose().name for _ in range(200)} == {"eum"}
    assert both.capacity() == 10


def test_a_standby_takes_the_traffic_only_when_the_primary_fails(settings: Any, stack: Any) -> None:
    standby = router(settings, 1.0, 0.0)
    assert standby.weights() == {"http": 1.0, "eum": 0.0}
    assert standby.capacity() == 20
    calls(standby.routes["http"], ok=0, failed=20)
    assert standby.weights() == {"http": 0.0, "eum": 1.0}
    assert standby.capacity() == 10


def test_a_half_open_provider_keeps_a_trickle_for_its_probes(settings: Any, stack: Any) -> None:
    both = router(settings, 0.5, 0.5)
    http = both.routes["http"]
    calls(http, ok=0, failed=20)
    http.circuit._redis.delete(http.circuit._open)  # its pause is over: half-open
    assert http.circuit.state() == "half-open"
    assert both.weights() == pytest.approx({"http": 0.5 * PROBE_SHARE, "eum": 1 - 0.5 * PROBE_SHARE})
    # and with the other a standby, the half-open primary still gets only its trickle
    standby = router(settings, 1.0, 0.0)
    calls(standby.routes["http"], ok=0, failed=20)
    standby.routes["http"].circuit._redis.delete(standby.routes["http"].circuit._open)
    assert standby.weights() == pytest.approx({"http": PROBE_SHARE, "eum": 1 - PROBE_SHARE})


def test_shares_move_what_one_provider_loses_to_the_others() -> None:
    assert failover.shares({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 1.0}) == {"a": 1.0, "b": 0.0}
    assert failover.shares({"a": 1.0, "b": 0.0}, {"a": 0.2, "b": 1.0}) == pytest.approx({"a": 0.2, "b": 0.8})
    assert failover.shares({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 0.5}) == {"a": 0.0, "b": 1.0}
    assert failover.shares({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 0.0}) == {}


def test_a_pinned_notification_goes_to_its_provider_whatever_the_weights(settings: Any, stack: Any) -> None:
    both = router(settings, 0.5, 0.5)
    calls(both.routes["http"], ok=0, failed=20)
    assert both.choose(pinned="http").name == "http"
    assert both.choose(pinned="gone").name == "eum"  # no such provider now: by weight
