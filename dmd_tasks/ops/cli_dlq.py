"""``dmd dlq``: the dead-letter queues of the Celery queues and the bridges (list, replay)."""

from __future__ import annotations

import json

import click

from dmd_tasks.infra.settings import get_settings


@click.group()
def dlq() -> None:
    """Dead-letter queues."""


@dlq.command("list")
@click.argument("queue")
@click.option("--max", "max_messages", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON array instead of one letter a line")
def dlq_list(queue: str, max_messages: int, as_json: bool) -> None:
    """Show up to --max dead letters of QUEUE (a Celery queue or a bridge, e.g. bridge-demand)."""
    from dmd_tasks.ops.dlq import receive, shown  # Celery and kombu load only for the commands that use them

    _known_dlq(queue)
    letters = [shown(letter) for letter in receive(get_settings(), queue, max_messages=max_messages)]
    if as_json:
        click.echo(json.dumps(letters))  # phone numbers and message bodies masked, as in logs
        return
    for letter in letters:
        click.echo(json.dumps(letter))


def _known_dlq(queue: str) -> None:
    from dmd_tasks.infra.topology import DLQ_OWNERS, INTAKE_QUEUES

    if queue not in (*DLQ_OWNERS, *INTAKE_QUEUES):
        raise click.BadParameter(
            f"{queue!r} has no dead-letter queue; one of: {', '.join((*DLQ_OWNERS, *INTAKE_QUEUES))}",
            param_hint="QUEUE",
        )


@dlq.command("replay")
@click.argument("queue")
@click.option("--dry-run", is_flag=True, help="show what would be re-driven; send and delete nothing")
@click.option("--max", "max_messages", default=100, show_default=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def dlq_replay(queue: str, dry_run: bool, max_messages: int, yes: bool) -> None:
    """Re-drive the dead letters of QUEUE (tasks re-published, bridge records re-routed)."""
    from dmd_tasks.celery_app import app  # Celery and kombu load only for the commands that use them
    from dmd_tasks.ops.dlq import replay

    _known_dlq(queue)
    if not dry_run and not yes:
        click.confirm(f"re-drive up to {max_messages} dead letters of {queue}?", abort=True)
    lines = replay(get_settings(), app, queue, dry_run=dry_run, max_messages=max_messages)
    for line in lines:
        click.echo(line)
    click.echo(f"{len(lines)} dead letters {'examined (dry run)' if dry_run else 'processed'}")
