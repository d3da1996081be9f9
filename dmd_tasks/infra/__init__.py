"""What every dmd process stands on: settings, the topology of queues and streams, AWS
clients, SQS helpers, dead-letter writing, metrics, logs, tracing, the shared rate limit.
Imports only ``dmd_tasks.domain`` of dmd."""
