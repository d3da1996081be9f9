"""``dmd``: the operator's command line.

dmd stack up | down        the local stack (moto server, Redis, provider simulators)
dmd provision              create the tables, queues (+ DLQs) and streams; idempotent
dmd demo [--fans N]        a whole sale on the local stack, with progress and a summary
dmd status SALE_ID         one sale's notifications by status (--watch to follow it)
dmd api                    the GraphQL endpoint (eventDetails, accountProfile)
dmd flower                 Flower, seeing every worker over the Redis monitoring channel
dmd dlq list QUEUE         show the dead letters of a queue or bridge
dmd dlq replay QUEUE       re-drive them (--dry-run to look first)
dmd sales rerun SALE_ID    generate an ended sale again (only fans without a notification get one)
dmd reconcile [--repair]   one reconciler pass now (--repair: first a one-off scan for old data)
"""

from __future__ import annotations

import json
import os
import sys
import time

import click
from rich.console import Console
from rich.live import Live

from dmd_tasks.infra.settings import get_settings
from dmd_tasks.ops.demo import run_demo
from dmd_tasks.ops.progress import sale_progress, status_table
from dmd_tasks.ops.provision import provision as run_provision
from dmd_tasks.ops.stack import Stack


@click.group()
def main() -> None:
    """dmd: the demand-capture notification pipeline."""


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
def provision() -> None:
    """Create or update every AWS resource (moto or AWS alike)."""
    report = run_provision(get_settings())
    click.echo(json.dumps(report, indent=2))


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
def status(sale_id: str, watch: bool) -> None:
    """Show one sale's notifications by status."""
    settings = get_settings()
    console = Console()
    progress = sale_progress(settings, sale_id)
    title = f"sale {sale_id} ({progress['sale_status']})"
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
def api() -> None:
    """Serve the GraphQL API at http://DMD_API_HOST:DMD_API_PORT/graphql (x-api-key required)."""
    from dmd_tasks.api.graphql import serve  # ariadne and uvicorn only where the API runs

    serve(get_settings())


@main.command()
def metrics() -> None:
    """Serve every process's Prometheus metrics, aggregated, at http://DMD_METRICS_HOST:DMD_METRICS_PORT/metrics."""
    from dmd_tasks.ops.metrics_server import serve  # prometheus_client's server only where it runs

    serve(get_settings())


@main.command()
def flower() -> None:
    """Run Flower on the Redis channel that carries worker events and remote control."""
    settings = get_settings()
    env = dict(os.environ)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    else:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"  # bound to loopback by default
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


@main.group()
def dlq() -> None:
    """Dead-letter queues."""


@dlq.command("list")
@click.argument("queue")
@click.option("--max", "max_messages", default=20, show_default=True)
def dlq_list(queue: str, max_messages: int) -> None:
    """Show up to --max dead letters of QUEUE (a Celery queue or a bridge, e.g. bridge-demand)."""
    from dmd_tasks.ops.dlq import receive, shown  # Celery and kombu load only for the commands that use them

    for letter in receive(get_settings(), queue, max_messages=max_messages):
        click.echo(json.dumps(shown(letter)))  # phone numbers and message bodies masked, as in logs


@dlq.command("replay")
@click.argument("queue")
@click.option("--dry-run", is_flag=True, help="show what would be re-driven; send and delete nothing")
@click.option("--max", "max_messages", default=100, show_default=True)
def dlq_replay(queue: str, dry_run: bool, max_messages: int) -> None:
    """Re-drive the dead letters of QUEUE (tasks re-published, bridge records re-routed)."""
    from dmd_tasks.celery_app import app  # Celery and kombu load only for the commands that use them
    from dmd_tasks.ops.dlq import replay

    lines = replay(get_settings(), app, queue, dry_run=dry_run, max_messages=max_messages)
    for line in lines:
        click.echo(line)
    click.echo(f"{len(lines)} dead letters {'examined (dry run)' if dry_run else 'processed'}")


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


@main.command()
@click.option("--repair", is_flag=True, help="first scan the table once for data older than the reconciler")
def reconcile(repair: bool) -> None:
    """Run one reconciler pass now (beat runs one every DMD_RECONCILE_INTERVAL_SECONDS)."""
    from dmd_tasks.celery_app import app  # Celery and kombu load only for the commands that use them
    from dmd_tasks.ops.repair import repair as run_repair
    from dmd_tasks.pipeline.stage6_reconcile import reconcile as run_reconcile
    from dmd_tasks.services import Services

    services = Services(get_settings())
    if repair:
        click.echo(json.dumps({"repair": run_repair(services)}))
    click.echo(json.dumps({"reconcile": run_reconcile(services, app)}))


if __name__ == "__main__":
    main()
