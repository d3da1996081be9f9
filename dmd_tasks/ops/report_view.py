"""What ``dmd report`` prints: the report (``dmd_tasks.ops.report``) as tables, as one JSON
document (``--json``), and drawn into a PNG (``--png``, ``dmd_tasks.ops.report_plot``)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table

from dmd_tasks.ops.report import REASONED, STATUSES

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int], top: float, width: int = 60) -> str:
    """``values`` in at most ``width`` characters (the busiest second of each stretch), scaled to ``top``."""
    if not values:
        return ""
    step = -(-len(values) // width)  # ceiling division: stretches of this many seconds
    peaks = [max(values[i : i + step]) for i in range(0, len(values), step)]
    top = max(top, max(peaks), 1)
    return "".join(" " if p == 0 else BARS[min(len(BARS) - 1, int(p / top * len(BARS)))] for p in peaks)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} s after notifyAt"


def outcome_table(report: dict[str, Any]) -> Table:
    """Every status with notifications, and under those that say why, each reason."""
    table = Table(title=f"sale {report['sale']} ({report['sale_status']}): {report['notifications']:,} notifications")
    table.add_column("final status, reason")
    table.add_column("notifications", justify="right")
    for status in STATUSES:
        count = report["status"][status]
        if not count:
            continue
        table.add_row(status, f"{count:,}")
        for reason, n in report["reasons"].get(status, {}).items() if status in REASONED else ():
            table.add_row(f"[dim]  {reason}", f"[dim]{n:,}")
    table.add_row("[bold]total", f"[bold]{report['notifications']:,}")
    return table


def facts_table(report: dict[str, Any]) -> Table:
    """When the SMS went, how fast, against which cap."""
    sent, cap, series = report["sent"], report["cap"], report["per_second"]
    table = Table(show_header=False)
    table.add_row("notifyAt", report["notify_at"] or "– (no SALE item)")
    table.add_row("SMS accepted by the provider", f"{sent['accepted']:,} ({sent['parts']:,} parts)")
    table.add_row("first SMS", _seconds(sent["seconds_to_first"]))
    table.add_row("last SMS", _seconds(sent["seconds_to_last"]))
    table.add_row("last delivery receipt", _seconds(sent["seconds_to_last_receipt"]))
    mean = sent["mean_per_second"]
    table.add_row(
        "SMS sent per second", f"peak {sent['peak_per_second']:,}, mean {mean:,.1f}" if mean is not None else "–"
    )
    table.add_row("cap", cap_text(cap))
    if series["sent"]:
        table.add_row("per second, first to last SMS", sparkline(series["sent"], cap["messages_per_second"]))
    return table


def cap_text(cap: dict[str, Any]) -> str:
    """The cap in SMS per second, and where it comes from."""
    account = f"account {cap['account_parts_per_second']:g} parts/s, shared by every sale"
    if cap["set_by"] == "campaign":
        return f"{cap['messages_per_second']:g}/s (campaign ratePerSecond; {account})"
    campaign = cap["campaign_rate_per_second"]
    campaign_text = "no campaign" if campaign is None else f"campaign ratePerSecond {campaign:g}"
    return f"{cap['messages_per_second']:g}/s ({account}, {cap['parts_per_message']:g} per SMS; {campaign_text})"


def show(report: dict[str, Any], *, as_json: bool, png: str | None) -> None:
    """Print the report (tables, or JSON on stdout alone) and, with ``png``, draw it first: a missing
    matplotlib fails before anything is printed."""
    if png:
        from dmd_tasks.ops.report_plot import PlotsMissing, write_png

        try:
            width, height = write_png(report, png)
        except PlotsMissing as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        Console().print(Group(outcome_table(report), facts_table(report)))
    if png:
        click.echo(f"wrote {png} ({width}×{height} px)", err=as_json)
