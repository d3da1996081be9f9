"""Two SMS providers, traffic split by weight and moved away from the one that fails.

With ``DMD_SMS_FAILOVER_PROVIDER`` set, every send picks a provider at random by its
*effective* weight: its resting weight (``1 - DMD_SMS_FAILOVER_WEIGHT`` for the primary,
``DMD_SMS_FAILOVER_WEIGHT`` for the other; 0 makes the other a standby) times its health,
plus, times its health, what the other loses (its resting weight times its ill health).
Health is read from the provider's own circuit (``dmd_tasks.infra.circuit``), which every
send worker shares:

- circuit open (paused after an outage or a 429): health 0, no traffic;
- half-open (a probe decides): a trickle (``PROBE_SHARE``), so that probes happen;
- closed: ``1 - error ratio / DMD_CIRCUIT_ERROR_RATIO`` over the circuit's sliding window
  (at least ``min_calls / 2`` calls in it, else 1): a provider failing more loses weight to the
  other, and gets it back as its failures leave the window (``DMD_CIRCUIT_WINDOW_SECONDS``).

So a standby with resting weight 0 takes the traffic the primary loses. When no provider is
healthy the primary takes it (every send then meets a paused circuit and waits without
spending an attempt). Each provider keeps its own cap (``SmsThrottle``) and circuit, so both
caps are honoured. A notification whose last call's outcome is unknown at an idempotent
provider is *pinned* to it (``pinnedProvider``): sent again anywhere else, it could reach the
fan twice. Weights are read at most once a second per process; ``dmd_sms_provider_weight``
and ``dmd_sms_provider_error_ratio`` show them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

import redis

from dmd_tasks.domain.providers import SmsProvider
from dmd_tasks.infra.circuit import ProviderCircuit
from dmd_tasks.infra.metrics import SMS_PROVIDER_ERROR_RATIO, SMS_PROVIDER_WEIGHT
from dmd_tasks.infra.ratelimit import SmsThrottle

log = logging.getLogger(__name__)

#: The share of its resting weight a half-open provider keeps: enough for its probes.
PROBE_SHARE = 0.05
#: How long a process reuses the weights it read.
REFRESH_SECONDS = 1.0


@dataclass
class ProviderRoute:
    """One provider with the cap and circuit of its account."""

    provider: SmsProvider
    throttle: SmsThrottle
    circuit: ProviderCircuit
    #: the account's cap, message parts per second
    cap: float
    #: its share of the traffic when every provider is healthy
    resting_weight: float

    @property
    def name(self) -> str:
        return self.provider.capabilities.name


def shares(resting: dict[str, float], health: dict[str, float]) -> dict[str, float]:
    """Each provider's share: its resting weight times its health, plus, times its health, what
    the others lose (their resting weight times their ill health, split among the others).
    Normalized to 1; empty when no provider is healthy at all."""
    others = max(1, len(resting) - 1)
    raw = {
        name: resting[name] * health[name]
        + health[name] * sum(resting[o] * (1 - health[o]) for o in resting if o != name) / others
        for name in resting
    }
    total = sum(raw.values())
    if total <= 0:
        return {}
    return {name: value / total for name, value in raw.items()}


class ProviderRouter:
    def __init__(self, routes: list[ProviderRoute], *, min_calls: int, error_ratio: float) -> None:
        self.routes = {route.name: route for route in routes}
        self.primary = routes[0]
        self._min_calls = min_calls
        self._error_ratio = error_ratio
        self._weights: dict[str, float] = {}
        self._read_at = -REFRESH_SECONDS
        self._lock = threading.Lock()

    def health(self, route: ProviderRoute) -> float:
        """0 (no traffic) to 1 (its full resting weight), from its circuit."""
        state = route.circuit.state()
        if state == "open":
            return 0.0
        if state == "half-open":
            return PROBE_SHARE
        ok, err = route.circuit.window_counts()
        calls = ok + err
        ratio = err / calls if calls else 0.0
        SMS_PROVIDER_ERROR_RATIO.labels(route.name).set(ratio)
        if calls < max(1, self._min_calls // 2):
            return 1.0
        return max(0.0, 1.0 - ratio / self._error_ratio)

    def weights(self) -> dict[str, float]:
        """Each provider's share of the traffic now (summing to 1)."""
        with self._lock:
            if time.monotonic() - self._read_at < REFRESH_SECONDS:
                return dict(self._weights)
        try:
            health = {name: self.health(route) for name, route in self.routes.items()}
        except redis.RedisError as exc:  # the circuits are unreadable: the resting split
            log.warning("provider weights unreadable (%s): resting weights", exc)
            health = dict.fromkeys(self.routes, 1.0)
        weights = shares({n: r.resting_weight for n, r in self.routes.items()}, health) or {self.primary.name: 1.0}
        weights = {name: weights.get(name, 0.0) for name in self.routes}
        for name, weight in weights.items():
            SMS_PROVIDER_WEIGHT.labels(name).set(weight)
        with self._lock:
            self._weights, self._read_at = weights, time.monotonic()
        return dict(weights)

    def choose(self, pinned: str | None = None) -> ProviderRoute:
        """The provider for one send: the pinned one if the notification has one, else by weight."""
        if len(self.routes) == 1:
            return self.primary
        if pinned is not None:
            route = self.routes.get(pinned)
            if route is not None:
                return route
            log.warning("a notification is pinned to provider %s, which is not configured now", pinned)
        weights = self.weights()
        names = [n for n, w in weights.items() if w > 0] or [self.primary.name]
        return self.routes[random.choices(names, weights=[weights.get(n, 1.0) for n in names])[0]]

    def capacity(self) -> float:
        """The parts per second every provider that takes traffic now can send together."""
        if len(self.routes) == 1:
            return self.primary.cap
        weights = self.weights()
        return sum(route.cap for name, route in self.routes.items() if weights.get(name, 0) > 0) or self.primary.cap
