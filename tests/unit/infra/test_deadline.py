"""Work bounded by time: a deadline, and the pace that sizes a batch from the latency measured."""

from __future__ import annotations

import time

import pytest

from dmd_tasks.infra.deadline import Deadline, Pace


def test_a_deadline_passes_and_counts_down() -> None:
    assert Deadline.after(0).passed and Deadline.after(0).remaining == 0
    soon = Deadline.after(60)
    assert not soon.passed and 59 < soon.remaining <= 60
    assert Deadline(time.monotonic() - 5).remaining == 0


def test_a_slower_round_is_taken_at_once_and_faster_ones_ease_it_down() -> None:
    pace = Pace(initial=0.02)
    pace.record(0.3)
    assert pace.seconds == 0.3  # the store slowed down: believed at once
    pace.record(0.1)
    assert pace.seconds == pytest.approx(0.3 + 0.3 * (0.1 - 0.3))  # one quick round: eased, not undone
    for _ in range(30):
        pace.record(0.01)
    assert pace.seconds == pytest.approx(0.01, abs=0.001)


def test_what_fits_before_a_deadline_is_whole_rounds_of_parallel_steps() -> None:
    pace = Pace(initial=0.25)
    assert pace.fits(Deadline.after(1.1), parallel=8) == 4 * 8
    assert pace.fits(Deadline.after(0.2), parallel=8) == 0
    assert pace.fits(Deadline.after(0), parallel=8) == 0
    assert pace.fits(Deadline.after(1.1)) == 4  # one at a time
