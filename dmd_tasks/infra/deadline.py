"""Work bounded by time, not by count.

A task that meets a slow dependency (a throttled table, a hot partition, a frozen endpoint) must
keep every step it finished and stop taking new work well before its soft time limit, instead of
being cut off there with its work in the air. ``Deadline`` says when to stop taking work;
``Pace`` measures how long one step of a kind actually takes, so that a batch is sized from the
latency seen now (how many steps still fit before the deadline), not from a constant.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """A moment (monotonic clock) after which no new work is taken."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @property
    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at


class Pace:
    """The measured duration of one round of steps (conditional writes issued together), starting
    from ``initial``: a slower round is taken at once (a deadline must not be overrun because the
    dependency slowed down a moment ago), a faster one eases it down (an exponentially weighted
    mean), so one quick round does not undo what the slow ones showed."""

    def __init__(self, initial: float, weight: float = 0.3) -> None:
        self.seconds = initial
        self._weight = weight

    def record(self, seconds: float) -> None:
        """One round of steps (run ``parallel`` at a time, see ``fits``) took ``seconds``."""
        seconds = max(seconds, 0.0)
        if seconds >= self.seconds:
            self.seconds = seconds
        else:
            self.seconds += self._weight * (seconds - self.seconds)

    def fits(self, deadline: Deadline, parallel: int = 1) -> int:
        """How many more steps fit before ``deadline``, ``parallel`` at a time."""
        rounds = deadline.remaining / max(self.seconds, 1e-4)
        return math.floor(rounds) * max(1, parallel)


class Gate:
    """Says yes at most once every ``gap`` seconds (and again at once if the clock went back):
    for work a pass does only now and then. One per process (``Services``)."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._lock = threading.Lock()

    def due(self, now: float, gap: float) -> bool:
        with self._lock:
            if now - self._last < gap and now >= self._last:
                return False
            self._last = now
            return True
