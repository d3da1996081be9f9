"""boto3 clients built from settings: the same code talks to moto locally and to AWS.

Clients are cached per process (and rebuilt after a fork, since a boto3 client must
not cross a fork), so a task never pays for a client construction.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

from dmd_tasks.settings import Settings

_lock = threading.Lock()
_clients: dict[tuple[int, int, str], Any] = {}


def session_for(settings: Settings) -> boto3.session.Session:
    return boto3.session.Session(
        region_name=settings.aws_region,
        aws_access_key_id=settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None,
        aws_secret_access_key=(
            settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
        ),
    )


def client(service: str, settings: Settings) -> Any:
    """A pooled boto3 client for ``service``, cached for this process and these settings."""
    key = (os.getpid(), id(settings), service)
    found = _clients.get(key)
    if found is not None:
        return found
    with _lock:
        found = _clients.get(key)
        if found is None:
            config = Config(
                connect_timeout=settings.aws_connect_timeout_seconds,
                read_timeout=settings.aws_read_timeout_seconds,
                max_pool_connections=settings.aws_max_pool_connections,
                retries={"mode": "standard", "max_attempts": 5},
            )
            found = session_for(settings).client(service, endpoint_url=settings.aws_endpoint_url, config=config)
            _clients[key] = found
    return found


def resource(service: str, settings: Settings) -> Any:
    """A boto3 resource (used only by provisioning and tools, never on a hot path)."""
    return session_for(settings).resource(service, endpoint_url=settings.aws_endpoint_url)
