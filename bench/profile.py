"""``python -m bench.profile PATH``: profile one hot path in-process with pyinstrument.

Paths: ``generate`` (a sale's fan-out), ``bridge`` (stream records to task messages),
``api`` (cached ``eventDetails`` requests through the ASGI app, no HTTP server), ``send``
(scheduled notifications through ``send_notifications``, batch by batch, with no cap: its
sends run one after another on the profiled thread, where a worker runs them on its AWS
thread pool, so that the profiler sees them). Each runs
against its own fresh local stack, with the CPU of the emulator process measured over the
same interval, so the profile says whether the project's own code or the emulator bounds the path.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("path", choices=tuple(PATHS))
    p.add_argument("--fans", type=int, default=10_000, help="items: fans, stream records or API requests")
    p.add_argument("--redis-db", type=int, default=13)
    p.add_argument("--all", action="store_true", help="show library frames too")
    args = p.parse_args(argv)
    from bench.harness import prepare_environment

    prepare_environment(args.redis_db)
    import psutil
    from pyinstrument import Profiler

    from bench.harness import Harness

    h = Harness(lambda line: print(line, file=sys.stderr))
    h.fresh()
    try:
        moto = psutil.Process(int((h.settings.run_dir.resolve() / "pids" / "moto.pid").read_text()))
        work = PATHS[args.path](h, args.fans)
        moto_cpu = sum(moto.cpu_times()[:2])
        profiler = Profiler(interval=0.001)
        started = time.perf_counter()
        profiler.start()
        count = work()
        profiler.stop()
        elapsed = time.perf_counter() - started
        moto_share = (sum(moto.cpu_times()[:2]) - moto_cpu) / elapsed
        print(profiler.output_text(unicode=False, color=False, show_all=args.all))
        print(
            f"{args.path}: {count:,} items in {elapsed:.2f}s ({count / elapsed:,.0f}/s); "
            f"moto busy {100 * moto_share:.0f} % of one core over the interval"
        )
    finally:
        h.close()
    return 0


def _generate(h: Any, fans: int) -> Any:
    from bench.seed import claim_sale, new_sale, seed_event
    from dmd_tasks.pipeline.stage2_generate import generate_sale
    from dmd_tasks.services import get_services

    seed_event(h.settings, "evprof", fans)
    sale_id = f"sale{uuid.uuid4().hex[:8]}"
    new_sale(h.settings, sale_id, "evprof", 1.0)
    claim_sale(h.settings, sale_id)
    services = get_services()

    def work() -> int:
        total = 0
        while True:
            result = generate_sale(sale_id, services)
            total += result.written
            if result.outcome != "continue":
                return total

    return work


def _bridge(h: Any, records: int) -> Any:
    from bench.bridge import demand_stream_records
    from bridges.demand import build_reader

    pages = demand_stream_records(h.settings, records)
    reader = build_reader(h.settings)

    def work() -> int:
        for page in pages:
            reader._handler(page, "shard-profile")
        return sum(len(p) for p in pages)

    return work


def _api(h: Any, requests: int) -> Any:
    import asyncio
    import json

    from bench.query import QUERY
    from dmd_tasks.api.graphql import create_app

    app = create_app(h.settings)
    key = h.settings.api_keys[0].get_secret_value().encode()
    body = json.dumps({"query": QUERY, "variables": {"id": "evhot"}}).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-api-key", key),
            (b"content-length", str(len(body)).encode()),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
        "asgi": {"version": "3.0"},
    }

    async def one() -> bytes:
        sent: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                sent.append(message.get("body", b""))

        await app(dict(scope), receive, send)
        return b"".join(sent)

    async def many(n: int) -> None:
        for _ in range(n):
            answer = await one()
            if b'"errors"' in answer:
                raise RuntimeError(answer.decode())

    asyncio.run(many(1))  # the cache miss: fetched from the simulator once

    def work() -> int:
        asyncio.run(many(requests))
        return requests

    return work


def _send(h: Any, fans: int) -> Any:
    from concurrent.futures import Executor, Future

    from bench.seed import claim_sale, new_sale, seed_event
    from dmd_tasks.infra import aws
    from dmd_tasks.infra.deadline import Deadline
    from dmd_tasks.pipeline import stage4_send
    from dmd_tasks.pipeline.stage2_generate import generate_sale
    from dmd_tasks.pipeline.stage3_schedule import run_tick
    from dmd_tasks.services import Services

    class Inline(Executor):
        """Runs what it is given at once, on the caller's thread."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            return future

    h.sim.configure(sms={"latency_ms": 0, "status_delay_ms": 60_000})
    services = Services(h.settings.model_copy(update={"sms_account_parts_per_second": 1_000_000.0}))
    seed_event(h.settings, "evsend", fans)
    sale_id = f"sale{uuid.uuid4().hex[:8]}"
    new_sale(h.settings, sale_id, "evsend", 10_000.0)
    claim_sale(h.settings, sale_id)
    while generate_sale(sale_id, services).outcome == "continue":
        pass
    ids: list[str] = []
    run_tick(services, sale_ids=[sale_id], span=fans, deadline=Deadline.after(3600), publish=ids.extend)
    # the task's services, no publishing of what goes back, and the sends on this thread
    for module, name, value in (
        (stage4_send, "get_services", lambda: services),
        (stage4_send, "publish_due", lambda *args: 0),
        (aws, "io_pool", lambda settings: Inline()),
    ):
        setattr(module, name, value)
    size = services.settings.send_batch_size

    def work() -> int:
        sent = 0
        for start in range(0, len(ids), size):
            sent += stage4_send.send_notifications.run(ids[start : start + size]).get("sent", 0)
        return sent

    return work


PATHS = {"generate": _generate, "bridge": _bridge, "api": _api, "send": _send}

if __name__ == "__main__":
    sys.exit(main())
