"""kombu's SQS transport, with one fix: a worker survives an unreachable SQS endpoint.

kombu's asynchronous SQS client answers a receive that timed out or failed (5xx, connection
refused) with an empty *list*, and ``Channel._on_messages_ready`` then calls ``.get`` on it:
``AttributeError`` in the worker's event loop, "Unrecoverable error", and every worker exits
a few seconds into an AWS outage. Here such an answer is simply "no messages": the consumer
polls again and picks up where it was once the endpoint answers.

``app.py`` registers this transport under the ``sqs`` scheme (kombu's TRANSPORT_ALIASES), so
the broker URL and everything that reads it stay as they are. Remove it once kombu handles
the list itself.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import SQS

log = logging.getLogger(__name__)


class Channel(SQS.Channel):
    def _on_messages_ready(self, queue: Any, qname: str, messages: Any) -> int:
        if not isinstance(messages, dict):
            log.warning("SQS receive on %s failed (endpoint unreachable or timing out); polling again", qname)
            return 0
        return int(super()._on_messages_ready(queue, qname, messages))


class Transport(SQS.Transport):
    Channel = Channel
