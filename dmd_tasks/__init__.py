"""dmd: the demand-capture notification pipeline, as Celery tasks on an SQS broker.

The package is layered; imports run one way, from the top of this list to the bottom
(``make lint`` checks it: ``dmd_tasks/ops/layers.py``):

- ``ops/``        the operator's side: the ``dmd`` command, provisioning, dead-letter replay,
                  the metrics server, the local stack and the demo
- ``api/``        the query surface: GraphQL, cached event details, the account proxy
- ``pipeline/``   the stages in pipeline order (``stage1_shorten`` … ``stage5_sms_status``),
                  the routing table and the decoding of stream records
- ``services``    the clients a stage works with, built once per process
- ``celery_app/`` the Celery app (``celery -A dmd_tasks.celery_app``), base task, signals,
                  boot checks, batched publishing, monitoring over Redis
- ``store/``, ``clients/``  DynamoDB and the campaign store; the external HTTP APIs
- ``infra/``      settings, topology (queues, streams, task names), AWS clients, SQS, dead
                  letters, metrics, logs, tracing, the shared rate limit
- ``domain/``     entities, ids, campaigns, provider events and capabilities, templates, URL
                  policy, errors

``bridges/`` (beside this package) depends on it; nothing here imports ``bridges``.
"""
