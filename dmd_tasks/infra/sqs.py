"""What every SQS caller of dmd shares: the service's limits, batch sends that re-send what
SQS reports as failed, and giving received messages back to a queue."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dmd_tasks.domain.errors import TransientError

#: SQS's SendMessageBatch / ChangeMessageVisibilityBatch limit (entries per call).
SQS_BATCH_MAX_ENTRIES = 10
#: SQS's limit on one message (bytes).
SQS_MAX_MESSAGE_BYTES = 262_144


def send_batch_all(sqs: Any, url: str, entries: list[dict[str, Any]], attempts: int = 5) -> None:
    """SendMessageBatch, re-sending the entries SQS reports as failed; raise if some never go."""
    pending = entries
    delay = 0.05
    for _ in range(attempts):
        response = sqs.send_message_batch(QueueUrl=url, Entries=pending)
        failed_ids = {f["Id"] for f in response.get("Failed", [])}
        if not failed_ids:
            return
        pending = [e for e in pending if e["Id"] in failed_ids]
        time.sleep(delay)
        delay *= 2
    raise TransientError(f"SendMessageBatch: {len(pending)} entries failed after {attempts} attempts")


def make_visible(sqs: Any, url: str, receipt_handles: Sequence[str]) -> None:
    """Give received messages back to the queue at once (ChangeMessageVisibilityBatch, 10 a call)."""
    for start in range(0, len(receipt_handles), SQS_BATCH_MAX_ENTRIES):
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(receipt_handles[start : start + SQS_BATCH_MAX_ENTRIES])
            ],
        )
