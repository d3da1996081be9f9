"""5. Broker ceiling: a no-op task's throughput on the same SQS endpoint, with the project's worker settings.

Per run, on an empty ``query`` queue: K no-op tasks are published ten a call
(SendMessageBatch, as the bridges do), keeping fewer than 20 waiting (moto's SQS slows
down with depth; the pipeline keeps its queues shallow too), while a worker started like
the Procfile's (the ``query`` worker, prefetch multiplier 1, late acks; its concurrency a
parameter) consumes them; timed until the queue is empty. Side by side: publishing the same number of tasks
one ``apply_async`` (SendMessage) each against ten a SendMessageBatch: what batching the
publish buys. The pipeline's notifications per task come from the cost benchmark.
"""

from __future__ import annotations

import time
from typing import Any

from bench.bridge import empty_queue, queue_depth
from bench.harness import Harness, summary, wait_until

WORKER = "worker-query"


def run(h: Harness, *, tasks: int, runs: int, concurrency: int = 4, depth: int = 20) -> dict[str, Any]:
    from bench.noop import noop
    from dmd_tasks.celery_app import app
    from dmd_tasks.celery_app.publish import BatchPublisher
    from dmd_tasks.infra import aws, topology
    from dmd_tasks.infra.topology import TaskCall

    settings = h.settings
    h.fresh()
    sqs = aws.client("sqs", settings)
    url = topology.queue_url(settings, "query")
    publisher = BatchPublisher(app, settings)
    consume_rates, batch_publish, single_publish = [], [], []
    publish_count = max(50, tasks // 5)

    # Publishing alone, no worker: one SendMessage per apply_async against SendMessageBatch.
    for _ in range(runs):
        empty_queue(sqs, url)
        started = time.perf_counter()
        for _n in range(publish_count):
            noop.apply_async()
        single_publish.append(publish_count / (time.perf_counter() - started))
        empty_queue(sqs, url)
        started = time.perf_counter()
        publisher.publish(noop.name, [TaskCall() for _n in range(publish_count)], queue="query")
        batch_publish.append(publish_count / (time.perf_counter() - started))
    empty_queue(sqs, url)

    worker = (WORKER, WORKER, ["-I", "bench.noop", "--concurrency", str(concurrency)])
    with h.processes([worker], label="broker") as group:
        h.wait_workers(group, ["query"])
        for run_no in range(runs):
            # Keep the queue shallow, as the pipeline does (the scheduler releases only what the
            # rate allows): publish ten more whenever fewer than ``depth`` wait.
            started, published = time.perf_counter(), 0
            while published < tasks:
                if queue_depth(sqs, url) < depth:
                    n = min(10, tasks - published)
                    publisher.publish(noop.name, [TaskCall() for _n in range(n)], queue="query")
                    published += n
                else:
                    time.sleep(0.005)
            wait_until(lambda: queue_depth(sqs, url) == 0, 120 + tasks / 5, 0.02, what="no-op tasks consumed")
            consume_rates.append(tasks / (time.perf_counter() - started))
            h.say(f"broker run {run_no + 1}/{runs}: {consume_rates[-1]:,.0f} no-op tasks/s")
    return {
        "tasks_per_run": tasks,
        "runs": runs,
        "worker_concurrency": concurrency,
        "queue_depth_kept_under": depth,
        "noop_tasks_per_second": summary(consume_rates, 1),
        "publish_apply_async_per_second": summary(single_publish, 1),
        "publish_send_message_batch_per_second": summary(batch_publish, 1),
        "publish_batching_gain": round(summary(batch_publish)["median"] / summary(single_publish)["median"], 2),
    }
