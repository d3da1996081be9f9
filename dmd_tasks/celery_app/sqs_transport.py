"""kombu's SQS transport, with three changes: a worker survives an unreachable SQS endpoint,
acknowledgements are deleted ten at a time, and its clients come from the process's shared boto3
session.

**Unreachable endpoint.** kombu's asynchronous SQS client answers a receive that timed out or
failed (5xx, connection refused) with an empty *list*, and ``Channel._on_messages_ready``
then calls ``.get`` on it: ``AttributeError`` in the worker's event loop, "Unrecoverable
error", and every worker exits a few seconds into an AWS outage. Here such an answer is
simply "no messages": the consumer polls again and picks up where it was once the endpoint
answers.

**Batched acks.** kombu acks a message with a DeleteMessage of its own, a blocking request in
the worker's event loop per task. Here an ack releases the message's prefetch slot at once
and queues its receipt handle; the handles of a queue are deleted with one
DeleteMessageBatch when ten are waiting or ``ack_batch_seconds`` after the first (on the
worker's event loop), and whatever waits is deleted when the channel closes (warm
shutdown). A worker killed in between loses at most that window of deletes: SQS delivers
those messages again after their visibility timeout, and every task is idempotent (as it
must be anyway: a DeleteMessage can be lost the same way). With no event loop (a plain
consumer), or ``ack_batch_seconds`` 0, each ack is deleted at once, as kombu does.

**Shared session.** kombu builds a new boto3 session for each queue's client, and a new session
parses the SQS service model again: a worker child's first publish to a queue (the generator's
scheduling tick, its next chunk) cost ~0.3 s of CPU, 0.3 s of a 1,000-fan sale's ~5. Here the
clients come from the process's session for the same credentials (``dmd_tasks.infra.aws``),
whose models a worker parses once, before it forks.

``app.py`` registers this transport under the ``sqs`` scheme (kombu's TRANSPORT_ALIASES), so
the broker URL and everything that reads it stay as they are. Remove the first change once
kombu handles the list itself.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from kombu.transport import SQS, virtual

from dmd_tasks.infra import aws

log = logging.getLogger(__name__)

#: SQS's limit of entries in one DeleteMessageBatch.
DELETE_BATCH = 10


class Channel(SQS.Channel):
    #: how long an ack waits for others to share its DeleteMessageBatch (transport option
    #: ``ack_batch_seconds``; 0 deletes each at once)
    ack_batch_seconds: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.transport_options
        self.ack_batch_seconds = float(options.get("ack_batch_seconds", self.ack_batch_seconds))
        self._acks: dict[str, list[tuple[str | None, str]]] = {}  # queue url → (queue, receipt handle)
        self._ack_flush_due = False

    def _new_boto_client(
        self,
        service: Any,
        region: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None = None,
        config: Config | None = None,
    ) -> Any:
        """kombu's, from the process's shared session (kombu 5.7 builds a new one each time)."""
        client_config = Config(**(self.transport_options.get("client-config") or {}))
        if config is not None:
            client_config = client_config.merge(config)
        options: dict[str, Any] = {"use_ssl": self.is_secure if self.is_secure is not None else True}
        if self.endpoint_url is not None:
            options["endpoint_url"] = self.endpoint_url
        return aws.client_from_shared_session(
            service, region, access_key_id, secret_access_key, session_token, config=client_config, **options
        )

    def _on_messages_ready(self, queue: Any, qname: str, messages: Any) -> int:
        if not isinstance(messages, dict):
            log.warning("SQS receive on %s failed (endpoint unreachable or timing out); polling again", qname)
            return 0
        return int(super()._on_messages_ready(queue, qname, messages))

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        if self.ack_batch_seconds <= 0 or self.hub is None:
            super().basic_ack(delivery_tag, multiple)
            return
        try:
            info = self.qos.get(delivery_tag).delivery_info
            receipt, url = info["sqs_message"]["ReceiptHandle"], info["sqs_queue"]
        except KeyError:
            super().basic_ack(delivery_tag, multiple)
            return
        queue = self.canonical_queue_name(info["routing_key"]) if "routing_key" in info else None
        virtual.Channel.basic_ack(self, delivery_tag)  # the prefetch slot is free now
        waiting = self._acks.setdefault(url, [])
        waiting.append((queue, receipt))
        if len(waiting) >= DELETE_BATCH:
            self._delete_acked(url, self._acks.pop(url))
        elif not self._ack_flush_due:
            self._ack_flush_due = True
            self.hub.call_later(self.ack_batch_seconds, self.flush_acks)

    def flush_acks(self) -> None:
        """Delete every waiting ack now."""
        self._ack_flush_due = False
        waiting, self._acks = self._acks, {}
        for url, entries in waiting.items():
            for start in range(0, len(entries), DELETE_BATCH):
                self._delete_acked(url, entries[start : start + DELETE_BATCH])

    def _delete_acked(self, url: str, entries: list[tuple[str | None, str]]) -> None:
        try:
            response = self.sqs(queue=entries[0][0]).delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(n), "ReceiptHandle": r} for n, (_, r) in enumerate(entries)]
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            # not deleted (or not known to be): SQS delivers them again after their visibility
            # timeout, and the tasks are idempotent
            log.warning(
                "deleting %d acked messages from %s failed (%s); SQS will deliver them again", len(entries), url, exc
            )
            return
        for failed in response.get("Failed", ()):
            # a handle past its visibility timeout (the message went to another consumer) is refused
            log.warning("acked message %s not deleted from %s: %s", failed.get("Id"), url, failed.get("Code"))

    def close(self) -> None:
        try:
            self.flush_acks()
        finally:
            super().close()


class Transport(SQS.Transport):
    Channel = Channel
