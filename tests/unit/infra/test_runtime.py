"""start_process: what every dmd process does at start, checked in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, logging, os, sys
from botocore import handlers
from dmd_tasks.infra import aws
from dmd_tasks.infra.runtime import start_process
from dmd_tasks.infra.settings import get_settings

start_process(get_settings(), "probe", trace=False)
logging.getLogger("probe").info("started with +15551234567")
print(json.dumps({
    "multiproc": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    "counting": all(spec in handlers.BUILTIN_HANDLERS for spec in aws._HANDLERS),
}))
"""


def test_a_started_process_logs_json_counts_aws_requests_and_writes_metrics_to_its_directory(tmp_path: Path) -> None:
    # Given a process with its own metrics directory
    env = {**os.environ, "DMD_METRICS_DIR": str(tmp_path / "metrics"), "DMD_LOG_JSON": "true"}
    # When it starts the way every dmd process does
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    # Then its samples go to that directory, every AWS request is counted ...
    assert facts["multiproc"] == str((tmp_path / "metrics").resolve())
    assert (tmp_path / "metrics").is_dir()
    assert facts["counting"] is True
    # ... and its log lines are JSON with its name and a correlation id, phone numbers masked
    line = json.loads(next(x for x in done.stderr.splitlines() if "started with" in x))
    assert line["process_name"] == "probe"
    assert line["correlation_id"].startswith("probe-")
    assert "+15551234567" not in line["message"]


def test_plain_text_logs_when_json_is_off(tmp_path: Path) -> None:
    env = {**os.environ, "DMD_METRICS_DIR": str(tmp_path / "m"), "DMD_LOG_JSON": "false"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if "started with" in x)
    assert not line.startswith("{") and "[probe-" in line
