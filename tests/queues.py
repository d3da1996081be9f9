"""SQS queues of a test's own on the session's moto, and reading them (the ``queues`` fixture).

``queues.settings`` is the session's settings with a queue-name prefix of the test's own, its
queues and dead-letter queues provisioned; they are deleted afterwards. Whatever dmd publishes
or dead-letters with those settings lands there, and nowhere else. (The Celery app publishes to
the session's queues, its configuration's: ``queues.take`` picks a test's own messages from those.)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.sqs import make_visible


@dataclass(frozen=True)
class Task:
    """One Celery task message as a worker would read it from SQS."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]


def _unbase64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, ValueError):
        return text


def decode_task(body: str) -> Task:
    """A task message of kombu's SQS transport (base64 of the envelope, whose body is base64 too)."""
    envelope = json.loads(_unbase64(body))
    args, kwargs, _embed = json.loads(_unbase64(envelope["body"]))
    return Task(envelope["headers"]["task"], args, kwargs, envelope["headers"])


class Queues:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sqs = aws.client("sqs", settings)

    def drain(self, url: str) -> list[str]:
        """Every message body on the queue; the messages are deleted."""
        bodies: list[str] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []
            )
            if not messages:
                return bodies
            for message in messages:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def take(self, url: str, wanted: Callable[[str], bool]) -> list[str]:
        """The wanted messages of a queue other tests may use too: they are deleted, the rest given back."""
        taken: list[str] = []
        others: list[str] = []
        try:
            while True:
                messages = self.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
                ).get("Messages", [])
                if not messages:
                    return taken
                for message in messages:
                    if wanted(message["Body"]):
                        taken.append(message["Body"])
                        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    else:
                        others.append(message["ReceiptHandle"])
        finally:
            make_visible(self.sqs, url, others)

    def take_tasks(self, url: str, marker: str) -> list[Task]:
        """The task messages carrying ``marker`` in their arguments, taken from a queue other tests may use too."""

        def wanted(body: str) -> bool:
            try:
                return marker in json.dumps(decode_task(body).args)
            except (ValueError, KeyError, TypeError):
                return False

        return [decode_task(body) for body in self.take(url, wanted)]

    def tasks(self, queue: str) -> list[Task]:
        """The task messages on one of this test's Celery queues (drained)."""
        return [decode_task(body) for body in self.drain(topology.queue_url(self.settings, queue))]

    def dead_letters(self, owner: str) -> list[dict[str, Any]]:
        """The dead letters of one of this test's queues or bridges (drained)."""
        return [json.loads(body) for body in self.drain(topology.dlq_url(self.settings, owner))]
