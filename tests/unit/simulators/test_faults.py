"""The simulators' own meters: what the benchmarks and the fault suite read as the provider's view."""

from __future__ import annotations

from simulators.faults import Faults, WindowPeak


def test_the_peak_is_the_most_times_in_any_one_second_window() -> None:
    peak = WindowPeak()
    for at in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5):  # never more than four within a second
        peak.add(at)
    assert peak.peak == 4


def test_a_time_reported_late_counts_in_the_windows_it_belongs_to() -> None:
    # Given three times within a second and a fourth far later
    peak = WindowPeak()
    for at in (10.0, 10.4, 10.8, 12.0):
        peak.add(at)
    assert peak.peak == 3

    # When a thread reports a time that came before the last one (10.5: within the first three's second)
    peak.add(10.5)

    # Then it counts with them
    assert peak.peak == 4


def test_times_more_than_a_second_apart_are_never_in_one_window() -> None:
    peak = WindowPeak()
    for at in (0.0, 1.0, 2.0, 3.0):  # a window is half-open: (end - 1 s, end]
        peak.add(at)
    assert peak.peak == 1


def test_the_rate_limit_refuses_arrivals_beyond_it_and_the_meter_counts_every_arrival() -> None:
    faults = Faults(rate_limit_per_second=3)
    outcomes = [faults.apply(arrived_at=faults.arrived()) for _ in range(5)]
    assert outcomes[:3] == [None, None, None]
    assert [o[0] for o in outcomes[3:] if isinstance(o, tuple)] == [429, 429]
    assert faults.max_requests_per_second == 5
