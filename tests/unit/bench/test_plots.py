"""The pictures of docs/benchmarks.md, drawn from small JSON documents of a run (no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from matplotlib.image import imread

from bench.plots import PICTURES, SIZE, other_fanouts, write_plots
from bench.report import markdown

DOCS = Path(__file__).resolve().parents[3] / "docs"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def red_pixels(path: Path) -> int:
    """Pixels of matplotlib's tab:red (the cap's line)."""
    pixels = imread(path)
    return int(((abs(pixels[..., 0] - 0.84) < 0.05) & (pixels[..., 1] < 0.25) & (pixels[..., 2] < 0.25)).sum())


def fanout(fans: int, idle: float, small: float, big: float) -> dict[str, Any]:
    return {"fans": fans, "worker_rss_mib": {"idle": idle, "at_n_over_10": small, "at_n": big}}


def document(with_series: bool = True) -> dict[str, Any]:
    """A run's JSON as the suite writes it, only the keys the pictures and their sections read."""
    committed = json.loads((DOCS / "benchmarks.json").read_text())
    results = {k: v for k, v in committed["results"].items() if k in ("fanout", "send", "latency")}
    results["fanout"] = {**results["fanout"], **fanout(10_000, 110.0, 150.0, 160.0)}
    results["send"] = {k: v for k, v in results["send"].items() if k != "run"}
    results["latency"] = json.loads(json.dumps(results["latency"]))
    results["send"].pop("two_sales_per_second", None)
    for leg in ("demand_insert_to_short_url", "scheduled_to_sent"):
        results["latency"][leg].pop("samples_ms", None)
    if with_series:
        results["send"]["two_sales_per_second"] = {
            "slow": [4, 4, 4, 4, 4, 4, 3, 4, 4, 4],
            "busy": [2, 5, 6, 5, 6, 6, 6, 0, 0, 0],
            "steady_window": [1.4, 5.6],
        }
        for leg, base in (("demand_insert_to_short_url", 200.0), ("scheduled_to_sent", 100.0)):
            results["latency"][leg]["samples_ms"] = [base + 3.5 * n for n in range(20)]
    return {**{k: v for k, v in committed.items() if k != "results"}, "results": results}


def test_each_picture_is_a_png_of_the_stated_size_beside_the_report(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"

    written = write_plots(document(), report, say=lambda _line: None)

    assert written == {section: f"benchmarks/{name}" for section, (name, _) in PICTURES.items()}
    for relative in written.values():
        path = tmp_path / relative
        assert png_size(path) == SIZE == (900, 450)
        assert path.stat().st_size > 10_000
    # the send picture draws the account's cap across it
    assert red_pixels(tmp_path / written["send"]) > 300


def test_a_run_that_kept_no_series_draws_no_picture_for_it_and_the_report_links_none(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    doc = document(with_series=False)
    doc["results"]["scale"] = {"error": "RuntimeError('x')"}

    written = write_plots(doc, report, say=lambda _line: None)

    assert set(written) == {"fanout"}  # its figures have always kept the memory at each N
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["fanout-memory.png"]
    text = markdown(doc, written)
    assert text.count("](benchmarks/") == 1


def test_a_failed_benchmark_draws_nothing(tmp_path: Path) -> None:
    doc = document()
    doc["results"]["send"] = {"error": "RuntimeError('the stack went away')"}

    assert "send" not in write_plots(doc, tmp_path / "benchmarks.md", say=lambda _line: None)


def test_the_report_links_each_picture_in_its_section(tmp_path: Path) -> None:
    doc = document()
    written = write_plots(doc, tmp_path / "benchmarks.md", say=lambda _line: None)

    text = markdown(doc, written)

    send = text[text.index("## 2. Send rate") : text.index("## 3. Latency")]
    assert f"![{PICTURES['send'][1]}](benchmarks/send-two-sales.png)" in send
    latency = text[text.index("## 3. Latency") :]
    assert "](benchmarks/latency-cdf.png)" in latency
    assert "](benchmarks/fanout-memory.png)" in text[: text.index("## 2. Send rate")]


def test_the_other_fan_out_runs_beside_a_report_join_its_memory_picture(tmp_path: Path) -> None:
    other = {"results": {"fanout": fanout(300_000, 111.7, 175.1, 186.5)}}
    (tmp_path / "benchmarks-fanout-300k.json").write_text(json.dumps(other))
    (tmp_path / "benchmarks-fanout-old.json").write_text(json.dumps({"results": {"send": {}}}))

    assert other_fanouts(tmp_path / "benchmarks.md") == [other["results"]["fanout"]]
    assert other_fanouts(tmp_path / "benchmarks-fanout-300k.md") == []  # not itself


def test_without_matplotlib_the_report_is_written_without_pictures(tmp_path: Path, monkeypatch: Any) -> None:
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said: list[str] = []

    assert write_plots(document(), tmp_path / "benchmarks.md", say=said.append) == {}
    assert said and "pip install 'dmd[plots]'" in said[0]


def test_the_committed_report_links_the_committed_pictures() -> None:
    text = (DOCS / "benchmarks.md").read_text()
    linked = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert linked, "docs/benchmarks.md links no picture"
    for relative in linked:
        assert png_size(DOCS / relative) == SIZE
