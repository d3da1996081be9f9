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
