"""What every simulated provider can be told to do: add latency, fail, rate-limit; and count."""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: ``Faults.apply`` result: serve the request, but answer only after ``timeout_ms``.
SLOW = "slow"


class WindowPeak:
    """The most events in any one-second window, by the times they happened (threads may report
    them a little out of order). Keeps two seconds of times; thread-safe only under the caller's lock."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self.peak = 0

    def add(self, at: float) -> None:
        times = self._times
        bisect.insort(times, at)
        if times[0] < times[-1] - 2.0:
            del times[: bisect.bisect_left(times, times[-1] - 2.0)]
        # every window holding ``at`` ends at it or at a later time, less than a second on
        first = bisect.bisect_left(times, at)
        last = bisect.bisect_left(times, at + 1.0)
        for end in range(first, last):
            inside = end + 1 - bisect.bisect_right(times, times[end] - 1.0)
            self.peak = max(self.peak, inside)

    def clear(self) -> None:
        self._times.clear()
        self.peak = 0


@dataclass
class Faults:
    """Behaviour of one simulated provider, changeable at run time through ``POST /_sim/config``."""

    latency_ms: float = 0.0
    error_rate: float = 0.0  # fraction of calls answered 500/503
    throttle_rate: float = 0.0  # fraction of calls answered 429 with ``Retry-After: throttle_retry_after``
    throttle_retry_after: float = 2.0
    timeout_rate: float = 0.0  # fraction of calls answered only after ``timeout_ms`` (see ``apply``)
    timeout_ms: float = 10_000.0
    rate_limit_per_second: float = 0.0  # 0: unlimited; above it, 429 with Retry-After
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _window: deque[float] = field(default_factory=deque, repr=False)
    #: the most requests that arrived in any one-second window (admitted or not)
    _arrivals: WindowPeak = field(default_factory=WindowPeak, repr=False)
    counters: Counter[str] = field(default_factory=Counter, repr=False)

    def update(self, values: dict[str, Any]) -> None:
        for key in (
            "latency_ms",
            "error_rate",
            "throttle_rate",
            "throttle_retry_after",
            "timeout_rate",
            "timeout_ms",
            "rate_limit_per_second",
        ):
            if key in values:
                setattr(self, key, float(values[key]))

    def public(self) -> dict[str, float]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "throttle_rate": self.throttle_rate,
            "throttle_retry_after": self.throttle_retry_after,
            "timeout_rate": self.timeout_rate,
            "timeout_ms": self.timeout_ms,
            "rate_limit_per_second": self.rate_limit_per_second,
        }

    def arrived(self) -> float:
        """Note one request's arrival (every request, replays included) for ``max_requests_per_second``;
        returns its time, for ``apply`` (the rate limit counts a request when it arrives)."""
        now = time.monotonic()
        with self._lock:
            self._arrivals.add(now)
        return now

    @property
    def max_requests_per_second(self) -> int:
        return self._arrivals.peak

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def apply(
        self, *, timeouts_accept: bool = False, arrived_at: float | None = None
    ) -> tuple[int, dict[str, str]] | str | None:
        """Decide this call's fate: None to serve it, (status, headers) to fail it, or ``SLOW``.

        A timeout either hangs and answers 504 (nothing done), or, with ``timeouts_accept``,
        returns ``SLOW``: the caller does the work and answers only after ``timeout_ms``, so
        the client gives up on a request that did succeed (an ambiguous send).
        """
        self.count("requests")
        # The rate limit counts a request when it arrives, as a provider does; the latency is
        # the time it then takes to answer.
        if self.rate_limit_per_second:
            now = time.monotonic() if arrived_at is None else arrived_at
            with self._lock:
                while self._window and now - self._window[0] >= 1.0:
                    self._window.popleft()
                if sum(1 for t in self._window if now - 1.0 < t <= now) >= self.rate_limit_per_second:
                    retry_after = max(1, int(1.0 - (now - self._window[0])) + 1)
                    self.counters["429"] += 1
                    refused = (429, {"Retry-After": str(retry_after)})
                else:
                    bisect.insort(self._window, now)  # threads may get here out of order
                    refused = None
            if refused is not None:
                if self.latency_ms:
                    time.sleep(self.latency_ms / 1000)
                return refused
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        roll = random.random()
        if roll < self.timeout_rate:
            self.count("timeouts")
            if timeouts_accept:
                return SLOW
            time.sleep(self.timeout_ms / 1000)
            return 504, {}
        roll -= self.timeout_rate
        if roll < self.error_rate:
            status = random.choice((500, 503))
            self.count(str(status))
            return status, {}
        roll -= self.error_rate
        if roll < self.throttle_rate:
            self.count("429")
            return 429, {"Retry-After": f"{self.throttle_retry_after:g}"}
        return None
