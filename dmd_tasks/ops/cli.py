"""``dmd``: the operator's command line.

dmd stack up | down        the local stack (moto server, Redis, provider simulators)
dmd provision              create the tables, queues (+ DLQs) and streams; idempotent
dmd demo [--fans N]        a whole sale on the local stack, with progress and a summary
dmd status SALE_ID         one sale's notifications by status (--watch to follow it)
dmd report SALE_ID         one sale after the fact: outcomes, SMS per second against the cap (--json, --png)
dmd api                    the GraphQL endpoint (eventDetails, accountProfile)
dmd flower                 Flower, seeing every worker over the Redis monitoring channel
dmd dlq list QUEUE         show the dead letters of a queue or bridge
dmd dlq replay QUEUE       re-drive them (--dry-run to look first)
dmd sales rerun SALE_ID    generate an ended sale again (only fans without a notification get one)
dmd sales create ...       write a sale of an event, due at a time (any ISO-8601 offset)
dmd campaign put FILE      store a sale's campaign from a JSON document (validated, parts counted)
dmd campaign show SALE_ID  print a sale's campaign as JSON
dmd reconcile [--repair]   one reconciler pass now (--repair: first a one-off scan for old data)

Every failure is one line on stderr and exit status 1 (2 for a usage error); ``dmd --debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from dmd_tasks.infra.settings import get_settings
from dmd_tasks.ops.cli_dlq import dlq
from dmd_tasks.ops.demo import run_demo
from dmd_tasks.ops.progress import sale_progress, status_table
from dmd_tasks.ops.provision import provision as run_provision
from dmd_tasks.ops.stack import Stack


class _Commands(click.Group):
    """The command group: a failure is one line on stderr (redacted, as logs are) and exit 1,
    unless ``--debug`` asked for the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if ctx.meta.get("dmd.debug"):
                raise
            click.echo(f"dmd: {failure(exc)}", err=True)
            sys.exit(1)


def failure(exc: BaseException) -> str:
    """One line saying what failed: the settings, an unreachable endpoint, or the error itself."""
    from pydantic import ValidationError

    from dmd_tasks.infra.logs import redact
    from dmd_tasks.infra.settings import SettingsError

    if isinstance(exc, SettingsError):  # already names the variables
        text = str(exc)
    elif isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        text = f"invalid {exc.title}: {where}: {first['msg']}"
    elif type(exc).__name__ in ("EndpointConnectionError", "ConnectionError", "ConnectTimeoutError"):
        text = f"cannot reach a service ({type(exc).__name__}: {exc})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))[:500]


@click.group(cls=_Commands)
@click.version_option(package_name="dmd", prog_name="dmd")
@click.option("--debug", is_flag=True, help="show the traceback of a failure")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """dmd: the demand-capture notification pipeline."""
    ctx.meta["dmd.debug"] = debug


@main.group()
def stack() -> None:
    """The local stack on loopback."""


@stack.command("up")
def stack_up() -> None:
    """Start moto server, Redis (unless one is running) and the provider simulators."""
    for line in Stack(get_settings()).up():
        click.echo(line)


@stack.command("down")
def stack_down() -> None:
    """Stop what `dmd stack up` started."""
    for line in Stack(get_settings()).down():
        click.echo(line)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the whole report as one JSON document")
def provision(as_json: bool) -> None:
    """Create or update every AWS resource (moto or AWS alike)."""
    report = run_provision(get_settings())
    if as_json:
        click.echo(json.dumps(report))
        return
    for name, value in report.items():
        counted = name in ("queues", "intake_queues", "streams")  # several of a kind; the rest are one each
        click.echo(f"{name}: {len(value)} ok" if counted else f"{name}: ok")


@main.command()
@click.option("--fans", default=1000, show_default=True, help="fans who registered demand for the sale")
@click.option(
    "--rate",
    "rate_per_second",
    default=50.0,
    show_default=True,
    help="the campaign's provider rate (SMS per second, across all send workers)",
)
@click.option("--timeout", "timeout_seconds", default=900.0, show_default=True, help="give up after this long")
@click.option("--keep-stack", is_flag=True, help="leave the local stack running afterwards")
@click.option("--json", "as_json", is_flag=True, help="print one JSON summary on the last line instead of tables")
def demo(fans: int, rate_per_second: float, timeout_seconds: float, keep_stack: bool, as_json: bool) -> None:
    """Run a whole sale on the local stack: demand in, one SMS per fan out, delivery receipts back."""
    summary = run_demo(
        get_settings(),
        fans=fans,
        rate_per_second=rate_per_second,
        timeout_seconds=timeout_seconds,
        keep_stack=keep_stack,
        as_json=as_json,
    )
    sys.exit(0 if summary["complete"] else 1)


@main.command()
@click.argument("sale_id")
@click.option("--watch", is_flag=True, help="refresh every second until interrupted")
@click.option("--json", "as_json", is_flag=True, help="print the counts as one JSON document")
def status(sale_id: str, watch: bool, as_json: bool) -> None:
    """Show one sale's notifications by status (exit 1 when the sale does not exist)."""
    settings = get_settings()
    console = Console()
    progress = sale_progress(settings, sale_id)
    title = f"sale {sale_id} ({progress['sale_status']})"
    if progress["sale_status"] == "missing" and not progress["notifications"]:
        if as_json:
            click.echo(json.dumps({"sale": sale_id, **progress}))
        click.echo(f"dmd: sale {sale_id} does not exist", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"sale": sale_id, **progress}))
        return
    if not watch:
        console.print(status_table(progress, title))
        return
    with Live(status_table(progress, title), console=console, refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(1.0)
                progress = sale_progress(settings, sale_id)
                live.update(status_table(progress, f"sale {sale_id} ({progress['sale_status']})"))
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("sale_id")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON document (docs/operations.md)")
@click.option("--png", type=click.Path(dir_okay=False), help="draw SMS per second against the cap into FILE")
def report(sale_id: str, as_json: bool, png: str | None) -> None:
    """One sale after the fact: notifications by final status and reason, SMS sent per second against
    the cap, and the time from notifyAt to the last SMS (exit 1 when the sale does not exist)."""
    from dmd_tasks.ops.report import sale_report
    from dmd_tasks.ops.report_view import show

    found = sale_report(get_settings(), sale_id)
    if found is None:
        click.echo(f"dmd: sale {sale_id} does not exist", err=True)
        sys.exit(1)
    show(found, as_json=as_json, png=png)


@main.command()
def api() -> None:
    """Serve the GraphQL API at http://DMD_API_HOST:DMD_API_PORT/graphql (x-api-key required)."""
    from dmd_tasks.api.graphql import serve  # ariadne and uvicorn only where the API runs

    serve(get_settings())


@main.command()
@click.option(
    "--samples-only",
    is_flag=True,
    help="serve this host's processes' samples only, not the queue depths and circuits the deployment "
    "shares (no SQS or Redis request per scrape): for an exporter beside each process",
)
def metrics(samples_only: bool) -> None:
    """Serve every process's Prometheus metrics, aggregated, at http://DMD_METRICS_HOST:DMD_METRICS_PORT/metrics."""
    from dmd_tasks.ops.metrics_server import serve  # prometheus_client's server only where it runs

    serve(get_settings(), shared=not samples_only)


@main.command()
def flower() -> None:
    """Run Flower on the Redis channel that carries worker events and remote control."""
    settings = get_settings()
    env = dict(os.environ)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    elif settings.flower_host in ("127.0.0.1", "localhost", "::1"):
        env["FLOWER_UNAUTHENTICATED_API"] = "true"  # on loopback only: this machine's operator
    else:
        # Flower's API can shut workers down: reachable from a network, it needs a password
        raise click.ClickException(
            f"Flower on {settings.flower_host} needs DMD_FLOWER_BASIC_AUTH=user:password (or DMD_FLOWER_HOST=127.0.0.1)"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "dmd_tasks.celery_app",
        f"--broker={settings.monitor_redis_url or settings.redis_url}",
        "flower",
        f"--address={settings.flower_host}",
        f"--port={settings.flower_port}",
    ]
    os.execvpe(argv[0], argv, env)


main.add_command(dlq)


@main.group()
def sales() -> None:
    """Sales."""


@sales.command("rerun")
@click.argument("sale_id")
def sales_rerun(sale_id: str) -> None:
    """Generate SALE_ID again, on purpose: it is claimed at once and only fans without a
    notification get one (nobody is messaged twice). Re-saving a sale never does this."""
    from dmd_tasks.services import Services

    if not Services(get_settings()).sales.rerun(sale_id, time.time()):
        click.echo(f"sale {sale_id}: not re-run (it does not exist, or it is still waiting or generating)", err=True)
        sys.exit(1)
    click.echo(f"sale {sale_id}: waiting; beat claims it at its next tick")


@sales.command("create")
@click.option("--sale", "sale_id", required=True, help="the sale's id")
@click.option("--event", "event_id", required=True, help="the event's id (its EVENT item must exist)")
@click.option("--at", "notify_at", required=True, help="when to notify: ISO-8601 with any offset")
def sales_create(sale_id: str, event_id: str, notify_at: str) -> None:
    """Write a sale (status waiting): beat claims it when its time comes. Its campaign must be
    stored first (`dmd campaign put`)."""
    from dmd_tasks.domain.entities import Sale
    from dmd_tasks.services import Services
    from dmd_tasks.store.items import item

    services = Services(get_settings())
    sale = _valid(Sale, {"id": sale_id, "eventId": event_id, "notifyAt": notify_at}, "sale")
    if services.events.get(event_id) is None:
        raise click.ClickException(f"event {event_id} does not exist (its EVENT item is the product's)")
    if services.campaigns.get(sale_id) is None:
        raise click.ClickException(f"sale {sale_id} has no campaign: store one first (dmd campaign put FILE)")
    services.table.put_items([item(sale)])
    click.echo(f"sale {sale_id}: waiting, due {sale.notify_at}")


main.add_command(sales, name="sale")  # `dmd sale create` reads as well as `dmd sales rerun`


@main.group()
def campaign() -> None:
    """Campaigns (the message, send window and rate of a sale), in the campaign store."""


@campaign.command("put")
@click.argument("file", type=click.File("r"))
def campaign_put(file: Any) -> None:
    """Store the campaign in FILE (JSON; `-` for stdin), fields as docs/data-model.md names them:
    saleId, eventId, template, window {start, end}, ratePerSecond, validitySeconds, phoneRegion."""
    from dmd_tasks.domain.campaigns import Campaign
    from dmd_tasks.domain.errors import InvalidCampaign
    from dmd_tasks.store.campaigns import open_campaign_store

    try:
        document = json.load(file)
    except ValueError as exc:
        raise click.ClickException(f"{file.name}: not JSON ({exc})") from None
    found = _valid(Campaign, document, "campaign")
    try:
        open_campaign_store(get_settings()).put(found)
    except InvalidCampaign as exc:
        raise click.ClickException(str(exc)) from None
    segments = found.estimated_segments()
    click.echo(f"campaign of sale {found.sale_id} stored: about {segments.parts} SMS part(s), {segments.encoding}")


@campaign.command("show")
@click.argument("sale_id")
def campaign_show(sale_id: str) -> None:
    """Print SALE_ID's campaign as JSON (exit 1 when it has none)."""
    from dmd_tasks.store.campaigns import open_campaign_store

    found = open_campaign_store(get_settings()).get(sale_id)
    if found is None:
        click.echo(f"dmd: sale {sale_id} has no campaign", err=True)
        sys.exit(1)
    click.echo(json.dumps(found.model_dump(mode="json", by_alias=True)))


def _valid(model: Any, document: Any, what: str) -> Any:
    """``document`` as ``model``, or a usage error naming the first field that is wrong."""
    from pydantic import ValidationError

    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or what
        raise click.ClickException(f"invalid {what}: {where}: {first['msg']}") from None


@main.command()
@click.option("--repair", is_flag=True, help="first scan the table once for data older than the reconciler")
def reconcile(repair: bool) -> None:
    """Run one reconciler pass now (beat runs one every DMD_RECONCILE_INTERVAL_SECONDS)."""
    from dmd_tasks.celery_app import app  # Celery and kombu load only for the commands that use them
    from dmd_tasks.ops.repair import repair as run_repair
    from dmd_tasks.pipeline.chain import publish_sends
    from dmd_tasks.pipeline.stage6_reconcile import reconcile as run_reconcile
    from dmd_tasks.services import Services

    services = Services(get_settings())
    if repair:
        click.echo(json.dumps({"repair": run_repair(services)}))
    published = lambda ids: publish_sends(app, services.settings, ids)  # noqa: E731
    click.echo(json.dumps({"reconcile": run_reconcile(services, published)}))


if __name__ == "__main__":
    main()
