"""NOTIFICATION items and their status machine (docs/data-model.md).

Every move is an UpdateItem conditional on the current status, so a repeated message
changes nothing the second time; each move that wins is counted
(``dmd_notification_transitions_total``).
"""

from __future__ import annotations

from dmd_tasks.store.notifications.base import Back, Sent
from dmd_tasks.store.notifications.generation import Generation
from dmd_tasks.store.notifications.receipts import Receipts
from dmd_tasks.store.notifications.reconciling import Reconciling
from dmd_tasks.store.notifications.scheduling import Scheduling
from dmd_tasks.store.notifications.sending import Sending

__all__ = ["Back", "NotificationRecords", "Sent"]


class NotificationRecords(Generation, Scheduling, Sending, Reconciling, Receipts):
    """Every move of a notification, by the stage that makes it (one module each)."""
