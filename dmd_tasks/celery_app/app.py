"""The Celery app of dmd. Importing it reads no setting: Celery builds its configuration
(``config.build``) from settings the first time it needs it.

Run a worker per queue:  ``celery -A dmd_tasks.celery_app worker -Q short-url``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from dmd_tasks.celery_app import monitoring
from dmd_tasks.celery_app import signals as _signals  # noqa: F401  (handlers connect when imported)
from dmd_tasks.celery_app.boot import QueueVisibilityCheck
from dmd_tasks.celery_app.config import build
from dmd_tasks.infra.settings import get_settings


def _configuration() -> dict[str, Any]:
    return build(get_settings())


# sqs:// uses kombu's SQS transport with the fix in sqs_transport (workers survive an AWS outage).
TRANSPORT_ALIASES["sqs"] = "dmd_tasks.celery_app.sqs_transport:Transport"

app = Celery("dmd")
app.add_defaults(_configuration)
# Events and remote control over Redis (Flower, celery inspect); tasks stay on SQS.
monitoring.install(app)
app.steps["worker"].add(QueueVisibilityCheck)
