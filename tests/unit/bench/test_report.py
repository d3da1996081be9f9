"""docs/benchmarks.md is rendered from the JSON of a run: every section, every figure."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import percentile, summary
from bench.report import markdown

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_the_committed_figures_render_every_benchmark() -> None:
    document = json.loads((DOCS / "benchmarks.json").read_text())
    text = markdown(document)
    for title in (
        "## 1. Fan-out",
        "## 2. Send rate",
        "## 3. Latency",
        "## 4. Bridge",
        "## 5. Broker",
        "## 6. Query surface",
        "## 7. Requests and CPU",
        "How much of the broker",
    ):
        assert title in text
    assert document["command"] in text and document["date"] in text
    assert "None" not in text


def test_summary_and_percentiles() -> None:
    s = summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["runs"]) == (2.0, 1.0, 3.0, 3)
    assert s["spread"] == 1.0  # (max - min) / median
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0 and percentile(samples, 95) == 95.0 and percentile(samples, 99) == 99.0


def test_what_is_left_to_the_busy_sale_is_the_ceiling_less_what_the_slow_one_took() -> None:
    from bench.send import shares

    # Given a cap of 10 with 4 % headroom (ceiling 9.615/s), a slow sale that took 3.8/s, a busy one 5.8/s
    got = shares(busy_rate=5.8, slow_rate=3.8, cap=10, headroom=0.04)
    # Then 5.815/s was left to the busy sale, of which it took 99.7 %; of C less the slow sale, 93.5 %
    assert round(got["ceiling"], 3) == 9.615 and round(got["left"], 3) == 5.815
    assert round(got["fraction_of_left"], 3) == 0.997
    assert round(got["fraction_of_cap_left"], 3) == 0.935


def test_a_section_from_a_run_of_its_own_says_which() -> None:
    document = json.loads((DOCS / "benchmarks.json").read_text())
    for result in document["results"].values():  # as from one run, whatever the committed figures say
        if isinstance(result, dict):
            result.pop("run", None)
    run = {
        "command": "make bench BENCH_ARGS='--only send --merge'",
        "date": "2026-01-02 03:04 UTC",
        "machine": document["machine"],
        "suite_seconds": 321.0,
    }
    document["results"]["send"]["run"] = run
    text = markdown(document)
    section = text[text.index("## 2. Send rate") : text.index("## 3. Latency")]
    assert f"`{run['command']}`, 2026-01-02 03:04 UTC" in section and "321 s" in section
    assert "did not all come from one run" in text  # the broker's share mixes benchmarks 2, 5 and 7
    del document["results"]["send"]["run"]
    assert "did not all come from one run" not in markdown(document)


def test_a_two_sales_run_keeps_each_sales_acceptances_per_second_from_the_first_of_either() -> None:
    from bench.send import per_second

    # Given acceptance times of the two sales (the provider's clock) and the busy sale's steady window
    got = per_second(busy=[100.2, 100.9, 101.5, 103.0], slow=[101.1, 103.99, 104.0], window=(100.8, 103.5))

    # Then each second from the first acceptance of either has each sale's count, and the window is
    # given from that first acceptance
    assert got == {"busy": [2, 1, 1, 0], "slow": [1, 0, 0, 2], "steady_window": [0.6, 3.3]}
