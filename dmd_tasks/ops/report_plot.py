"""The picture of ``dmd report --png``: SMS sent per second over the sale, against its cap.

Drawn from the report's JSON shape (``dmd_tasks.ops.report``) with matplotlib's Agg canvas (no
display, no pyplot state). matplotlib is the ``plots`` extra, never needed to run the pipeline:
it is imported only here, when a picture is asked for.
"""

from __future__ import annotations

from typing import Any

WIDTH_INCHES, HEIGHT_INCHES, DPI = 10.0, 4.5, 100
#: the picture's size in pixels
SIZE = (int(WIDTH_INCHES * DPI), int(HEIGHT_INCHES * DPI))
INSTALL = "pip install 'dmd[plots]'"


class PlotsMissing(RuntimeError):
    """matplotlib is not installed."""


def new_figure() -> Any:
    """An empty figure of ``SIZE`` on an Agg canvas; PlotsMissing without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsMissing(f"pictures are drawn with matplotlib, which is not installed: {INSTALL}") from None
    figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_png(report: dict[str, Any], path: str) -> tuple[int, int]:
    """Draw the report's sends per second against its cap into ``path`` (PNG); its size in pixels."""
    figure = new_figure()
    draw(figure.add_subplot(), report)
    figure.savefig(path, dpi=DPI, format="png")
    return SIZE


def draw(ax: Any, report: dict[str, Any]) -> None:
    sent, cap, series = report["sent"], report["cap"], report["per_second"]
    counts: list[int] = series["sent"]
    offset = series["seconds_after_notify_at"]
    since = f"notifyAt ({report['notify_at']})" if report["notify_at"] else "the first SMS (the sale has no notifyAt)"
    start = 0.0 if offset is None else float(offset)
    limit = float(cap["messages_per_second"])
    top = max(limit, max(counts, default=0), 1)
    if counts:
        edges = [start + i for i in range(len(counts) + 1)]
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.75, label="SMS sent in the second")
        # from notifyAt, unless the first SMS came much later (quiet hours): then from it
        near = start <= max(300, 4 * len(counts))
        ax.set_xlim(0 if near else start - 1, edges[-1] + max(1, len(counts) // 50))
    else:
        ax.text(0.5, 0.5, "no SMS sent", transform=ax.transAxes, ha="center", va="center", fontsize=14)
    by = "the campaign's ratePerSecond" if cap["set_by"] == "campaign" else "the account's, in SMS"
    ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1.6, label=f"cap {limit:g}/s ({by})")
    other, what = _other_cap(cap)
    if other is not None and other <= 2 * top:
        ax.axhline(other, color="0.45", linestyle=":", linewidth=1.2, label=what)
        top = max(top, other)
    if sent["seconds_to_last"] is not None:
        last = float(sent["seconds_to_last"])  # its second: the line in the middle of it
        ax.axvline(
            last + 0.5, color="0.25", linestyle="-.", linewidth=1, label=f"last SMS: {last:,.0f} s after notifyAt"
        )
    ax.set_ylim(0, top * 1.25)
    ax.set_xlabel(f"seconds after {since}")
    ax.set_ylabel("SMS sent per second")
    ax.set_title(
        f"sale {report['sale']}: {sent['accepted']:,} SMS, peak {sent['peak_per_second']:,}/s, cap {limit:g}/s",
        fontsize=12,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.figure.legend(loc="outside lower center", ncols=4, fontsize=9, frameon=False)


def _other_cap(cap: dict[str, Any]) -> tuple[float | None, str]:
    """The cap that does not bind, in SMS per second, and its label."""
    if cap["set_by"] == "account":
        rate = cap["campaign_rate_per_second"]
        return rate, "" if rate is None else f"campaign ratePerSecond {rate:g}/s"
    account = cap["account_parts_per_second"] / max(cap["parts_per_message"], 1.0)
    return account, f"account cap {cap['account_parts_per_second']:g} parts/s (shared by every sale)"
