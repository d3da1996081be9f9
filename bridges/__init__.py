"""Bridges: processes that turn stream records into Celery tasks on SQS.

- ``sources``   the streams (DynamoDB Streams, Kinesis) behind one interface
- ``reader``    reads every shard of a source, parents first, with durable checkpoints
- ``leases``, ``lease_table``  several processes share a stream's shards (the protocol; its storage)
- ``checkpoints`` a reader's progress per shard when it runs without leases
- ``handler``   one record handler for every bridge: plan → publish → dead-letter → count
- ``demand``    the demand table's changes → stage tasks (``python -m bridges.demand``)
- ``sms_status`` the SMS provider's status stream → ``record_sms_status`` (``python -m bridges.sms_status``)
- ``runner``    the process around a reader: logs, metrics, tracing, signals

Decoding and routing are the pipeline's (``dmd_tasks.pipeline.records``, ``.routing``), so a
dead letter replayed by ``dmd dlq replay`` goes through the same rules.
"""
