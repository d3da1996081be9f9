"""``python -m bench`` (``make bench``): the benchmark suite on the local stack.

Every benchmark starts from a fresh local stack of its own (free ports, its own Redis
database), measures the project side by side with the ceiling of the service under it
in the same run, and the figures go to ``docs/benchmarks.md`` and ``docs/benchmarks.json``
with the command, the date and the machine, and the pictures drawn from that JSON to
``docs/benchmarks/`` (``bench/plots.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS = ("fanout", "send", "latency", "bridge", "broker", "query", "cost", "cost_eum", "scale")
REPO = Path(__file__).resolve().parent.parent


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    p.add_argument(
        "--fanout-runs",
        type=int,
        default=1,
        help="fan-out: sales of N fans (each takes minutes at N = 100,000 on the emulator)",
    )
    p.add_argument("--fans", type=int, default=100_000, help="fan-out: fans in the sale (N)")
    p.add_argument(
        "--raw-items",
        type=int,
        default=0,
        help="fan-out: items per bare BatchWriteItem run (0: N/10, at least 2,000, at most 50,000)",
    )
    p.add_argument(
        "--send-cap",
        type=float,
        default=10.0,
        help="send: the provider's cap C (messages/s); well below the chain's ceiling on the emulator "
        "(it measured 17 to 37/s on 2 cores on different days): near it, the emulator sets the rate, not the cap",
    )
    p.add_argument(
        "--send-compare-headroom",
        type=float,
        default=0.02,
        help="send: the two-sales runs again with DMD_SMS_ACCOUNT_HEADROOM set to this (0: not run)",
    )
    _load_options(p)
    return p.parse_args(argv)


def _load_options(p: argparse.ArgumentParser) -> None:
    """The options of the benchmarks after fan-out: send, latency, bridge, broker, query, cost, scale."""
    p.add_argument("--send-latency-ms", type=float, default=100.0, help="send: provider latency per call")
    p.add_argument("--send-workers", type=int, default=2, help="send: send worker processes")
    p.add_argument("--send-seconds", type=float, default=12.0, help="send: length of one run at the cap")
    p.add_argument("--latency-samples", type=int, default=20, help="latency: samples per leg")
    p.add_argument("--bridge-records", type=int, default=400, help="bridge: stream records per run")
    p.add_argument("--broker-tasks", type=int, default=500, help="broker: no-op tasks per run")
    p.add_argument("--query-seconds", type=float, default=3.0, help="query: seconds per load level")
    p.add_argument("--query-concurrency", default="1,16,64", help="query: concurrent clients per level")
    p.add_argument("--cold-samples", type=int, default=30, help="query: cold misses measured")
    p.add_argument("--discovery-latency-ms", type=float, default=100.0, help="query: Discovery latency (cold)")
    p.add_argument("--cost-fans", type=int, default=1000, help="cost: fans in the demo sale")
    p.add_argument("--scale-small", type=int, default=300, help="scale: fans in the small sale")
    p.add_argument("--scale-big", type=int, default=3000, help="scale: fans in the big sale (a third share numbers)")
    p.add_argument("--scale-rate", type=float, default=50.0, help="scale: the campaigns' rate C (messages/s)")
    p.add_argument(
        "--scale-distinct", action="store_true", help="scale: every fan of the big sale has a number of their own"
    )
    p.add_argument(
        "--scale-lead-seconds",
        type=float,
        default=0.0,
        help="scale: each sale's notifyAt this long after it is written",
    )
    p.add_argument("--scale-pollers", type=int, default=0, help="scale: clients reading the sale's progress every 2 s")
    p.add_argument("--redis-db", type=int, default=12, help="the bench's own Redis database (flushed)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="the Markdown report")
    p.add_argument(
        "--merge",
        action="store_true",
        help="replace only the chosen benchmarks' figures in the existing report (each names its own run)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    from bench.harness import prepare_environment

    prepare_environment(args.redis_db)  # before any dmd module reads its settings

    from bench import report
    from bench.harness import Harness

    chosen = _chosen(args.only)
    signal.signal(signal.SIGTERM, _interrupted)
    h = Harness(_say)
    started = time.monotonic()
    results, failed = _run_all(h, _runners(h, args), chosen)
    results.update(report.derived(results))
    _write_report(args, argv, results, started)
    if failed:
        _say(f"FAILED: {', '.join(failed)} (see above and the logs under the run directory)")
        return 1
    return 0


def _chosen(only: str) -> list[str]:
    """The benchmarks ``--only`` names; exits on a name that is not one."""
    chosen = [b.strip() for b in only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmarks: {unknown}; choose from {BENCHMARKS}")
    return chosen


def _say(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", flush=True)


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: every process the bench started stops


def _module(name: str) -> Any:
    return importlib.import_module(f"bench.{name}")


def _runners(h: Any, args: argparse.Namespace) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each benchmark's run, with its sizes from the command line."""
    return {
        "fanout": lambda: _module("fanout").run(
            h,
            fans=args.fans,
            runs=args.fanout_runs,
            raw_runs=args.runs,
            raw_items=args.raw_items or min(max(2000, args.fans // 10), 50_000),
        ),
        "send": lambda: _module("send").run(
            h,
            cap=args.send_cap,
            latency_ms=args.send_latency_ms,
            workers=args.send_workers,
            seconds=args.send_seconds,
            runs=args.runs,
            compare_headroom=args.send_compare_headroom,
        ),
        "latency": lambda: _module("latency").run(h, samples=args.latency_samples),
        "bridge": lambda: _module("bridge").run(h, records=args.bridge_records, runs=args.runs),
        "broker": lambda: _module("broker").run(h, tasks=args.broker_tasks, runs=args.runs),
        "query": lambda: _module("query").run(
            h,
            seconds=args.query_seconds,
            runs=args.runs,
            concurrency=[int(c) for c in args.query_concurrency.split(",")],
            cold_samples=args.cold_samples,
            discovery_latency_ms=args.discovery_latency_ms,
        ),
        "cost": lambda: _module("cost").run(h, fans=args.cost_fans),
        "cost_eum": lambda: _module("cost").run(h, fans=args.cost_fans, provider="eum"),
        "scale": lambda: _module("scale").run(
            h,
            small=args.scale_small,
            big=args.scale_big,
            rate=args.scale_rate,
            pollers=args.scale_pollers,
            share=not args.scale_distinct,
            lead=args.scale_lead_seconds,
        ),
    }


def _run_all(
    h: Any, runners: dict[str, Callable[[], dict[str, Any]]], chosen: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Run the chosen benchmarks in suite order, then close the harness; (results, the failed ones)."""
    results: dict[str, Any] = {}
    failed: list[str] = []
    try:
        for name in BENCHMARKS:
            if name in chosen:
                _say(f"--- {name}")
                begun = time.monotonic()
                try:
                    results[name] = runners[name]()
                except Exception as exc:  # one benchmark failing must not lose the others' figures
                    _say(f"{name} FAILED: {exc!r}")
                    results[name] = {"error": repr(exc)[:500]}
                    failed.append(name)
                results[name]["wall_seconds"] = round(time.monotonic() - begun, 1)
                _say(f"{name}: {json.dumps(results[name])}")
    finally:
        h.close()
    return results, failed


def _write_report(args: argparse.Namespace, argv: list[str], results: dict[str, Any], started: float) -> None:
    """The figures, with the command, the date and the machine, to ``--out`` (Markdown) and its .json."""
    from bench import report
    from bench.harness import machine
    from bench.plots import write_plots

    this_run = {
        "command": "make bench" + (f" BENCH_ARGS={shlex.quote(' '.join(argv))}" if argv else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "suite_seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    document = {**this_run, "results": results}
    if args.merge:
        # the report of an earlier run, with the chosen benchmarks' figures replaced (and marked)
        document = json.loads(out.with_suffix(".json").read_text())
        for name, figures in results.items():
            if name in BENCHMARKS:
                document["results"][name] = {**figures, "run": this_run}
        document["results"].update(report.derived(document["results"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    figures = write_plots(document, out, say=_say)  # from the JSON just written, as bench.report does
    out.write_text(report.markdown(document, figures))
    _say(f"wrote {out}, {out.with_suffix('.json')} and {len(figures)} pictures ({this_run['suite_seconds']:.0f}s)")


if __name__ == "__main__":
    sys.exit(main())
