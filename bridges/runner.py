"""What every bridge process does around its reader: logs, metrics, tracing, signals, the read loop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from bridges.reader import ShardReader
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import Settings, get_settings


def run_bridge(name: str, build_reader: Callable[[Settings], ShardReader]) -> None:
    """Run a bridge until SIGTERM/SIGINT; it stops after the page in hand (checkpointed)."""
    settings = get_settings()
    start_process(settings, name)
    log = logging.getLogger(f"bridges.{name}")
    reader = build_reader(settings)

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current page", signum)
        reader.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("reading %s", reader.source.stream_id)
    reader.run()
