"""``python -m bench.loadgen``: a small closed-loop HTTP load generator (and a Redis GET loop).

Runs in its own process so that its threads do not share an interpreter with the bench.
Each of C threads holds one keep-alive connection and sends the next request as soon as
the previous answer arrived; prints one JSON object: requests, errors, seconds, latencies
(p50, p99 in ms), requests per second.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def _percentiles(latencies: list[float]) -> dict[str, float]:
    from bench.harness import percentile

    return {"p50_ms": round(1000 * percentile(latencies, 50), 3), "p99_ms": round(1000 * percentile(latencies, 99), 3)}


def http_load(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, object]:
    parts = urlsplit(url)
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_gate = threading.Barrier(concurrency + 1)

    host = parts.hostname or "127.0.0.1"

    def client(i: int) -> None:
        connection = http.client.HTTPConnection(host, parts.port, timeout=30)
        start_gate.wait()
        own = latencies[i]
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                connection.request("POST", parts.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200 or b'"errors"' in payload:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                connection.close()
                connection = http.client.HTTPConnection(host, parts.port, timeout=30)
                continue
            own.append(time.perf_counter() - began)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    merged = [x for own in latencies for x in own]
    return {
        "concurrency": concurrency,
        "requests": len(merged),
        "errors": sum(errors),
        "seconds": round(elapsed, 3),
        "rps": round(len(merged) / elapsed, 1),
        **_percentiles(merged),
    }


def redis_load(url: str, seconds: float) -> dict[str, object]:
    import redis

    client = redis.Redis.from_url(url)
    client.set("bench:get", json.dumps({"id": "ev", "name": "x" * 400}))
    latencies = []
    stop = time.perf_counter() + seconds
    began = time.perf_counter()
    while time.perf_counter() < stop:
        t = time.perf_counter()
        client.get("bench:get")
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - began
    return {
        "concurrency": 1,
        "requests": len(latencies),
        "errors": 0,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        **_percentiles(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--body", default="")
    p.add_argument("--header", action="append", default=[], help="name: value")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--redis", action="store_true", help="GET one key from the Redis at --url instead")
    args = p.parse_args(argv)
    if args.redis:
        result = redis_load(args.url, args.seconds)
    else:
        headers = dict(h.split(": ", 1) for h in args.header)
        result = http_load(args.url, args.body.encode(), headers, args.concurrency, args.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
