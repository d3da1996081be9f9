"""The chain's ceiling, this checkout against another, interleaved in one run (A/B).

``python -m bench.ab --other DIR [--runs 3] [--fans 600] [--send-workers 2]``

``DIR`` is another checkout of the project (``git worktree add DIR <commit>``). Each run
measures both, one after the other, alternating which goes first: a fresh local stack of the
checkout's own (its emulator, its processes), one sale of ``--fans`` with no cap anywhere
(campaign rate 10,000/s, account cap 10,000/s, the provider answering in ``--latency-ms``), and
the rate the provider accepted its messages at (the steady part, as ``bench.send`` measures the
chain's ceiling), with the AWS requests the pipeline made per message. Both checkouts run with
this interpreter (the same packages); each imports its own code. Prints the figures per run and
the ratio of the medians, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent

#: Run inside a checkout (its own code imported): one ceiling sale on a fresh stack of its own.
PROBE = """
import json, sys
from bench.harness import prepare_environment
prepare_environment(int(sys.argv[1]))
from bench.harness import Harness
from bench.cost import metric_samples
from bench.send import PROCESSES, SIMULATOR_NICE, one_sale
fans, workers, latency_ms = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
h = Harness(lambda line: print(line, file=sys.stderr))
try:
    h.fresh(simulator_nice=SIMULATOR_NICE)
    senders = [("worker-send", f"worker-send-{i}", ["-n", f"send{i}@%h"]) for i in range(1, workers + 1)]
    nodes = ["generate", "schedule", *(f"send{i}" for i in range(1, workers + 1))]
    env = {"DMD_SMS_ACCOUNT_PARTS_PER_SECOND": "10000"}
    with h.processes([*PROCESSES, *senders], env=env, label="ab") as group:
        h.wait_workers(group, nodes)
        h.sim.configure(sms={"latency_ms": latency_ms, "status_delay_ms": 3_600_000})
        metrics = str(h.settings.metrics_dir.resolve())
        before = sum(metric_samples(metrics, "dmd_aws_requests", ("service",)).values())
        ceiling = one_sale(h, fans, rate=10_000, timeout=120 + fans)
        requests = sum(metric_samples(metrics, "dmd_aws_requests", ("service",)).values()) - before
    print(json.dumps({"rate": ceiling["rate"], "aws_requests_per_message": requests / fans}))
finally:
    h.close()
"""


def probe(tree: Path, redis_db: int, fans: int, workers: int, latency_ms: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(redis_db), str(fans), str(workers), str(latency_ms)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600 + 2 * fans,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: the ceiling run failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--other", type=Path, required=True, help="another checkout of the project (B)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--fans", type=int, default=600)
    p.add_argument("--send-workers", type=int, default=2)
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--redis-db", type=int, default=14)
    args = p.parse_args(argv)
    trees = {"this": HERE, "other": args.other.resolve()}
    seen: dict[str, list[dict[str, Any]]] = {"this": [], "other": []}
    for run in range(args.runs):
        order = ["this", "other"] if run % 2 == 0 else ["other", "this"]
        for name in order:
            figures = probe(trees[name], args.redis_db, args.fans, args.send_workers, args.latency_ms)
            seen[name].append(figures)
            print(f"[ab] run {run + 1} {name}: {figures}", file=sys.stderr, flush=True)
    medians = {
        name: {key: round(statistics.median(f[key] for f in runs), 3) for key in runs[0]} for name, runs in seen.items()
    }
    print(
        json.dumps(
            {
                "command": "python -m bench.ab " + " ".join(argv if argv is not None else sys.argv[1:]),
                "runs": seen,
                "medians": medians,
                "ceiling_ratio_this_to_other": round(medians["this"]["rate"] / medians["other"]["rate"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
