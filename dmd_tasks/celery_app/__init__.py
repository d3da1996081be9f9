"""The Celery side of dmd: the app (``celery -A dmd_tasks.celery_app``), the base task and its
``task()`` decorator, signal handlers, boot checks, batched publishing to SQS, and worker
events and remote control over Redis."""

from dmd_tasks.celery_app.app import app

__all__ = ["app"]
