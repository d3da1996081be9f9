"""6. Query surface: ``eventDetails`` from cache under load, next to a bare Redis GET; cold misses.

The API process is the Procfile's ``api`` (uvicorn, one process). A load generator in a
separate process asks for one cached event on loopback at several concurrencies, closed
loop, one keep-alive connection per client: ``wrk`` where it is installed (Debian's
package; C code, so the generator is not what is measured), else ``bench.loadgen``
(Python threads, which saturate first: the report names the generator). While each level
runs, ``/health`` is asked every 100 ms and its slowest answer kept. In the same run a
single connection GETs one key from the same Redis (the round trip a cache hit cannot
beat). Then cold misses: a distinct event each time, with Discovery's simulated latency,
paced below the shared Discovery rate limit (so the figure is the miss path, not the
limiter's wait).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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


#: wrk's script: the request, a count of answers that are not a 200 without "errors", and one JSON line.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local bad_total = 0
  for _, t in ipairs(threads) do bad_total = bad_total + t:get("bad") end
  local e = summary.errors
  io.write(string.format('DMD {"requests": %%d, "seconds": %%.3f, "errors": %%d, "p50_ms": %%.3f, "p99_ms": %%.3f}\\n',
    summary.requests, summary.duration / 1e6, bad_total + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk(url: str, body: str, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, Any]:
    """One closed-loop level with wrk: requests/s, p50/p99 (ms) and errors."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"body": body, "headers": lines})
    try:
        threads = min(2, concurrency)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    figures = json.loads(next(line for line in out.splitlines() if line.startswith("DMD "))[4:])
    return {**figures, "rps": round(figures["requests"] / figures["seconds"], 1)}


def generator() -> str:
    """The load generator this run uses."""
    if shutil.which("wrk"):
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
        return f"wrk {version[1]}" if len(version) > 1 else "wrk"
    return "bench.loadgen"


class HealthProbe:
    """Asks ``/health`` every 100 ms in a thread while a load level runs; keeps every answer's time."""

    def __init__(self, url: str) -> None:
        self._url, self._stop = url, threading.Event()
        self.seconds: list[float] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(0.1):
                began = time.perf_counter()
                try:
                    session.get(self._url, timeout=5).raise_for_status()
                    self.seconds.append(time.perf_counter() - began)
                except requests.RequestException:
                    self.failures += 1


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
        levels, redis_runs, errors, health = _cached_load(
            h, url, headers, seconds=seconds, runs=runs, concurrency=concurrency
        )
        cold = _cold_misses(h, ask, cold_samples=cold_samples, discovery_latency_ms=discovery_latency_ms)
    return {
        "seconds_per_level": seconds,
        "runs": runs,
        "generator": generator(),
        "errors": errors,
        "health_under_load": health,
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
) -> tuple[dict[int, dict[str, list[float]]], dict[str, list[float]], int, dict[str, Any]]:
    """``runs`` rounds of the cached event at every concurrency, each beside a bare Redis GET.

    Returns (figures per concurrency, Redis GET figures, errors, /health's answers under the load).
    """
    levels: dict[int, dict[str, list[float]]] = {c: {"rps": [], "p50_ms": [], "p99_ms": []} for c in concurrency}
    errors = 0
    redis_runs: dict[str, list[float]] = {"rps": [], "p50_ms": [], "p99_ms": []}
    body = json.dumps({"query": QUERY, "variables": {"id": "evhot"}})
    header_args = [a for name, value in headers.items() for a in ("--header", f"{name}: {value}")]
    use_wrk = shutil.which("wrk") is not None
    health_url = url.rsplit("/", 1)[0] + "/health"
    health_seconds: dict[int, list[float]] = {c: [] for c in concurrency}
    health_failures = 0
    for run_no in range(runs):
        for c in concurrency:
            with HealthProbe(health_url) as probe:
                if use_wrk:
                    result = wrk(url, body, headers, c, seconds)
                else:
                    result = loadgen(
                        "--url", url, "--body", body, *header_args, "--concurrency", str(c), "--seconds", str(seconds)
                    )
            health_seconds[c] += probe.seconds
            health_failures += probe.failures
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
    health: dict[str, Any] = {"failures": health_failures, "clients": {}}
    for c, seconds_taken in health_seconds.items():
        if seconds_taken:
            health["clients"][str(c)] = {
                "samples": len(seconds_taken),
                "p50_ms": round(1000 * percentile(seconds_taken, 50), 1),
                "max_ms": round(1000 * max(seconds_taken), 1),
            }
    return levels, redis_runs, errors, health


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
