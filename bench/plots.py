"""The pictures of ``docs/benchmarks.md``, drawn from the JSON of a run beside it.

``write_plots`` draws each picture whose series the JSON keeps, into a folder named after the
report (``docs/benchmarks.md`` → ``docs/benchmarks/``), and returns their paths relative to the
report for its links: the send rate per second of a two-sales run against the cap (benchmark 2,
``two_sales_per_second``), the latency CDF of the chain's two legs (benchmark 3, ``samples_ms``),
and the generate worker's peak memory against the sale's size N (benchmark 1, ``worker_rss_mib``;
with the fan-out runs of other reports beside this one, ``benchmarks-fanout-*.json``). A JSON from
before a series was kept draws no picture for it. matplotlib (the ``plots`` extra, in the dev lock
``make`` installs) draws on its Agg canvas; without it the report is written without pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

WIDTH_INCHES, HEIGHT_INCHES, DPI = 9.0, 4.5, 100
SIZE = (int(WIDTH_INCHES * DPI), int(HEIGHT_INCHES * DPI))
#: section of the report → the picture's file name and what it shows (its link text)
PICTURES = {
    "fanout": ("fanout-memory.png", "Generate worker's peak memory against the sale's size N"),
    "send": ("send-two-sales.png", "Two sales sharing the account's cap: SMS accepted per second"),
    "latency": ("latency-cdf.png", "Latency through the chain: the share of samples within a time"),
}


def folder_of(report: Path) -> Path:
    """Where a report's pictures go: ``docs/benchmarks.md`` → ``docs/benchmarks/``."""
    return report.with_suffix("")


def write_plots(document: dict[str, Any], report: Path, say: Callable[[str], None] = print) -> dict[str, str]:
    """Draw every picture the run's JSON has the series for; {section: path relative to the report}."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        say("pictures not drawn: matplotlib is not installed (pip install 'dmd[plots]')")
        return {}
    results = document.get("results", {})
    drawers: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
        "fanout": lambda ax, r: fanout_memory(ax, r, other_fanouts(report)),
        "send": send_two_sales,
        "latency": latency_cdf,
    }
    written: dict[str, str] = {}
    for section, draw in drawers.items():
        result = results.get(section)
        if not isinstance(result, dict) or "error" in result:
            continue
        figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        if not draw(figure.add_subplot(), result):
            continue  # this run's JSON does not keep the series
        name = PICTURES[section][0]
        folder_of(report).mkdir(parents=True, exist_ok=True)
        figure.savefig(folder_of(report) / name, dpi=DPI, format="png")
        written[section] = f"{folder_of(report).name}/{name}"
    return written


def send_two_sales(ax: Any, send: dict[str, Any]) -> bool:
    """The slow and the busy sale's acceptances per second, stacked, against C and the ceiling."""
    series = send.get("two_sales_per_second")
    if not series:
        return False
    slow, busy = series["slow"], series["busy"]
    both = [a + b for a, b in zip(slow, busy, strict=True)]
    edges = list(range(len(slow) + 1))
    cap, headroom = send["cap_per_second"], send["headroom"]
    start, end = series["steady_window"]
    ax.axvspan(start, end, color="0.92", label="where the rates are counted")
    ax.stairs(
        slow,
        edges,
        fill=True,
        color="tab:orange",
        alpha=0.85,
        label=f"slow sale (campaign {send['slow_sale_rate']:g}/s)",
    )
    ax.stairs(both, edges, baseline=slow, fill=True, color="tab:blue", alpha=0.75, label="busy sale (campaign C)")
    ax.axhline(cap, color="tab:red", linestyle="--", linewidth=1.6, label=f"the account's cap C = {cap:g}/s")
    ax.axhline(
        cap / (1 + headroom), color="0.3", linestyle=":", linewidth=1.3, label=f"C / {1 + headroom:g} (headroom)"
    )
    ax.set_xlim(0, len(slow))
    ax.set_ylim(0, max(cap, max(both, default=0)) * 1.3)
    ax.set_xlabel("seconds from the first SMS accepted (by the provider's clock)")
    ax.set_ylabel("SMS accepted per second")
    ax.set_title(f"Two sales sharing one account's cap: {send['send_workers']} send workers, run 1 of {send['runs']}")
    _finish(ax)
    return True


def latency_cdf(ax: Any, latency: dict[str, Any]) -> bool:
    """The share of samples done within a time, for each leg of the chain."""
    legs = [
        ("demand_insert_to_short_url", "demand insert → short URL stored", "tab:green"),
        ("scheduled_to_sent", "scheduled → sent", "tab:blue"),
    ]
    if not all("samples_ms" in latency.get(key, {}) for key, _, _ in legs):
        return False
    for key, label, color in legs:
        samples = sorted(latency[key]["samples_ms"])
        n = len(samples)
        ax.step(
            [0.0, *samples],
            [0.0, *((i + 1) / n for i in range(n))],
            where="post",
            color=color,
            linewidth=1.8,
            label=f"{label} ({n} samples, p50 {latency[key]['p50_ms']:.0f} ms)",
        )
    ax.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="0.6", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_xlabel("milliseconds, one item in flight")
    ax.set_ylabel("share of samples done within")
    ax.set_title("Latency through the chain (dotted: p50 and p95)")
    _finish(ax)
    return True


def fanout_memory(ax: Any, fanout: dict[str, Any], others: list[dict[str, Any]] | None = None) -> bool:
    """Peak RSS of the generate worker: idle (N = 0), after a sale of N/10 and of N; one line a run."""
    runs = [fanout, *(others or [])]
    for n, run in enumerate(sorted(runs, key=lambda r: r["fans"])):
        rss, fans = run["worker_rss_mib"], run["fans"]
        xs, ys = [0, max(1, fans // 10), fans], [rss["idle"], rss["at_n_over_10"], rss["at_n"]]
        ax.plot(xs, ys, marker="o", linewidth=1.6, color=f"C{n}", label=f"run with N = {fans:,}")
        for x, y in zip(xs[1:], ys[1:], strict=True):
            ax.annotate(f"{y:.0f} MiB", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    top = max(r["worker_rss_mib"]["at_n"] for r in runs)
    ax.set_ylim(0, top * 1.25)
    ax.set_xlim(left=-0.02 * max(r["fans"] for r in runs))
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x:,.0f}")
    ax.set_xlabel("fans in the sale (N); 0: the worker idle before it")
    ax.set_ylabel("peak RSS of the worker (MiB)")
    ax.set_title("Peak memory of the generate worker against the size of the sale")
    _finish(ax)
    return True


def other_fanouts(report: Path) -> list[dict[str, Any]]:
    """The fan-out figures of the other fan-out runs kept beside this report (``benchmarks-fanout-*.json``)."""
    found = []
    for path in sorted(report.parent.glob("benchmarks-fanout-*.json")):
        if path.with_suffix(".md") == report:
            continue
        fanout = json.loads(path.read_text()).get("results", {}).get("fanout", {})
        if "worker_rss_mib" in fanout:
            found.append(fanout)
    return found


def _finish(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.figure.legend(loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
