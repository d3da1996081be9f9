"""What every bridge process does around its reader: logging, signals, the read loop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from bridges.shards import ShardReader
from dmd_tasks import aws, logs, tracing
from dmd_tasks.settings import Settings, get_settings


def run_bridge(name: str, build_reader: Callable[[Settings], ShardReader]) -> None:
    """Run a bridge until SIGTERM/SIGINT; it stops after the page in hand (checkpointed)."""
    settings = get_settings()
    logs.configure(settings.log_level, json_lines=settings.log_json, process=name)
    log = logging.getLogger(f"bridges.{name}")
    tracing.setup(settings, name)
    aws.count_requests()
    reader = build_reader(settings)

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current page", signum)
        reader.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("reading %s", reader.source.stream_id)
    reader.run()
