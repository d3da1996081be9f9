"""Two beat processes at once: each job is sent once per tick, and the standby takes over."""

from __future__ import annotations

import re
import signal
import time
import uuid

import pytest

from dmd_tasks.ops.stack import ProcessGroup
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SENT = re.compile(r"Sending due task (claim-due-sales|schedule-notifications)")


def sends(group: ProcessGroup, name: str) -> int:
    path = group.log_dir / f"{name}.log"
    return len(SENT.findall(path.read_text())) if path.exists() else 0


def holds_lock(group: ProcessGroup, name: str) -> bool:
    path = group.log_dir / f"{name}.log"
    return path.exists() and "beat: Acquired lock" in path.read_text()


def test_two_beats_send_each_tick_once_and_the_standby_takes_over(settings, stack) -> None:
    group = ProcessGroup(
        settings.run_dir.resolve() / "logs" / f"e2e-beat-{uuid.uuid4().hex[:6]}",
        env={
            "DMD_BEAT_KEY_PREFIX": f"dmd:test-beat:{uuid.uuid4().hex[:6]}",
            "DMD_BEAT_LOCK_TIMEOUT_SECONDS": "4",
            "DMD_BEAT_MAX_LOOP_INTERVAL_SECONDS": "1",
            "DMD_CLAIM_INTERVAL_SECONDS": "1",
            "DMD_SCHEDULE_INTERVAL_SECONDS": "1",
            "DMD_LOG_JSON": "false",
        },
    )
    try:
        # Given two beats started together
        group.start_one("beat", "beat-a")
        group.start_one("beat", "beat-b")
        active = wait_until(
            lambda: next((n for n in ("beat-a", "beat-b") if holds_lock(group, n)), None),
            timeout=30,
            what="one beat to hold the lock",
        )
        standby = "beat-b" if active == "beat-a" else "beat-a"

        # When they run for a while, then only the lock holder sends, once per tick and job
        start = sends(group, active)
        time.sleep(6)
        sent = sends(group, active) - start
        assert 8 <= sent <= 14, sent  # two jobs, 1 s apart, for 6 s
        assert sends(group, standby) == 0
        assert not holds_lock(group, standby)

        # When the active beat is killed, then the standby takes over within the lock timeout
        group.kill(active, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: holds_lock(group, standby), timeout=20, interval=0.1, what="the standby to take over")
        taken_over_after = time.monotonic() - killed_at
        assert taken_over_after < 4 + 1 + 2  # lock timeout + one loop + slack
        wait_until(lambda: sends(group, standby) >= 2, timeout=10, what="the standby to send")
    finally:
        group.stop()
