"""6. Query surface: ``eventDetails`` from cache under load, next to a bare Redis GET; cold misses.

The API process is the Procfile's ``api`` (uvicorn, one process). A load generator in a
separate process (``bench.loadgen``: C threads, one keep-alive connection each, closed
loop) asks for one cached event on loopback at several concurrencies; in the same run a
single connection GETs one key from the same Redis (the round trip a cache hit cannot
beat). Then cold misses: a distinct event each time, with Discovery's simulated latency,
paced below the shared Discovery rate limit (so the figure is the miss path, not the
limiter's wait).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.harness import Harness, percentile, summary, wait_until

API = "api"
QUERY = (
    "query($id: ID!) { eventDetails(eventId: $id) { id name url startDateTime stale fetchedAt venue { name city } } }"
)


def loadgen(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run(
    h: Harness, *, seconds: float, runs: int, concurrency: list[int], cold_samples: int, discovery_latency_ms: float
) -> dict[str, Any]:
    settings = h.settings
    h.fresh()
    url = f"http://{settings.api_host}:{settings.api_port}/graphql"
    key = settings.api_keys[0].get_secret_value() if settings.api_keys else ""
    headers = {"content-type": "application/json", "x-api-key": key}

    def ask(event_id: str) -> dict[str, Any]:
        response = requests.post(url, json={"query": QUERY, "variables": {"id": event_id}}, headers=headers, timeout=30)
        response.raise_for_status()
        return response.json()

    with h.processes([API], label="query") as group:
        _start_api(url, group, ask)
        levels, redis_runs, errors = _cached_load(h, url, headers, seconds=seconds, runs=runs, concurrency=concurrency)
        cold = _cold_misses(h, ask, cold_samples=cold_samples, discovery_latency_ms=discovery_latency_ms)
    return {
        "seconds_per_level": seconds,
        "runs": runs,
        "errors": errors,
        "cached": {str(c): {k: summary(v, 1) for k, v in levels[c].items()} for c in concurrency},
        "redis_get": {k: summary(v, 3) for k, v in redis_runs.items()},
        "cold": {
            "samples": len(cold),
            "discovery_latency_ms": discovery_latency_ms,
            "p50_ms": round(1000 * percentile(cold, 50), 1),
            "p99_ms": round(1000 * percentile(cold, 99), 1),
        },
    }


def _start_api(url: str, group: Any, ask: Callable[[str], dict[str, Any]]) -> None:
    """Wait for the API to listen, then warm the cache with the event the load asks for."""
    wait_until(lambda: _answers(url), 60, 0.2, what="API listening")
    if group.dead():
        raise RuntimeError(f"api exited: {group.dead()}")
    warm = ask("evhot")
    if warm.get("errors") or not warm["data"]["eventDetails"]:
        raise RuntimeError(f"eventDetails failed: {warm}")


def _cached_load(
    h: Harness, url: str, headers: dict[str, str], *, seconds: float, runs: int, concurrency: list[int]
) -> tuple[dict[int, dict[str, list[float]]], dict[str, list[float]], int]:
    """``runs`` rounds of the cached event at every concurrency, each beside a bare Redis GET.

    Returns (figures per concurrency, Redis GET figures, errors).
    """
    levels: dict[int, dict[str, list[float]]] = {c: {"rps": [], "p50_ms": [], "p99_ms": []} for c in concurrency}
    errors = 0
    redis_runs: dict[str, list[float]] = {"rps": [], "p50_ms": [], "p99_ms": []}
    body = json.dumps({"query": QUERY, "variables": {"id": "evhot"}})
    header_args = [a for name, value in headers.items() for a in ("--header", f"{name}: {value}")]
    for run_no in range(runs):
        for c in concurrency:
            result = loadgen(
                "--url", url, "--body", body, *header_args, "--concurrency", str(c), "--seconds", str(seconds)
            )
            errors += int(result["errors"])
            for k in ("rps", "p50_ms", "p99_ms"):
                levels[c][k].append(float(result[k]))
        result = loadgen("--redis", "--url", h.settings.redis_url, "--seconds", str(seconds))
        for k in ("rps", "p50_ms", "p99_ms"):
            redis_runs[k].append(float(result[k]))
        h.say(
            f"query run {run_no + 1}/{runs}: "
            + ", ".join(f"C={c} {levels[c]['rps'][-1]:,.0f} rps" for c in concurrency)
            + f"; Redis GET {redis_runs['rps'][-1]:,.0f}/s"
        )
    return levels, redis_runs, errors


def _cold_misses(
    h: Harness, ask: Callable[[str], dict[str, Any]], *, cold_samples: int, discovery_latency_ms: float
) -> list[float]:
    """Seconds of ``cold_samples`` misses (a distinct event each), paced below the Discovery rate limit."""
    h.sim.configure(discovery={"latency_ms": discovery_latency_ms})
    pace = 1.0 / max(0.5, h.settings.discovery_rate_per_second * 0.8)
    cold: list[float] = []
    for n in range(cold_samples):
        began = time.perf_counter()
        answer = ask(f"evcold{n:05d}")
        cold.append(time.perf_counter() - began)
        if answer.get("errors") or answer["data"]["eventDetails"]["stale"]:
            raise RuntimeError(f"cold miss {n} was not answered from Discovery: {answer}")
        time.sleep(max(0.0, pace - cold[-1]))
    return cold


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False
