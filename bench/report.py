"""``docs/benchmarks.md`` from the figures of one run (the JSON beside it holds every value)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.plots import PICTURES, write_plots
from bench.report_load import _cost, _m, _query, _ratio, _scale


def derived(results: dict[str, Any]) -> dict[str, Any]:
    """Figures that combine two benchmarks of the run: how much of the broker the pipeline uses."""
    try:
        if any("error" in results.get(k, {}) for k in ("broker", "send", "cost")):
            return {}
        ceiling = results["broker"]["noop_tasks_per_second"]["median"]
        rate = results["send"]["chain_ceiling_per_second"]
        per_notification = results["cost"]["tasks_per_notification"]
    except KeyError:
        return {}
    tasks = sum(per_notification.values())
    # without batching, sending and recording a status would each be a task per notification
    unbatched = tasks - per_notification.get("send_notifications", 0) - per_notification.get("record_sms_status", 0) + 2
    runs = {json.dumps(results[k].get("run"), sort_keys=True) for k in ("broker", "send", "cost")}
    return {
        "broker_use": {
            "from_separate_runs": len(runs) > 1,
            "pipeline_notifications_per_second": rate,
            "tasks_per_notification": round(tasks, 4),
            "pipeline_tasks_per_second": round(rate * tasks, 2),
            "noop_ceiling_tasks_per_second": ceiling,
            "share_of_broker_ceiling": round(rate * tasks / ceiling, 3) if ceiling else None,
            "tasks_per_notification_unbatched": round(unbatched, 4),
            "notifications_per_second_the_broker_allows": round(ceiling / tasks, 1) if tasks else None,
            "notifications_per_second_the_broker_allows_unbatched": round(ceiling / unbatched, 1),
        }
    }


def _separate_run(run: dict[str, Any]) -> str:
    m = run["machine"]
    return (
        f"*This section comes from a run of its own: `{run['command']}`, {run['date']}, {m['cpu']}, "
        f"{m['cores']} cores, {run['suite_seconds']:.0f} s.*"
    )


def markdown(doc: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The report; ``figures``: section → its picture, relative to the report (``bench.plots``)."""
    m = doc["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); every figure below comes from the one run",
        "described here (a section that names a run of its own comes from that one, and is compared",
        "only within itself), and `docs/benchmarks.json` beside this file holds every value. Each",
        "benchmark ran on a fresh local stack (moto server, Redis, the provider simulators, the",
        "Procfile's processes) and is quoted next to the ceiling of the service under it, measured",
        "in the same run: the local emulator, not the project, sets the absolute numbers.",
        "Medians of several runs, with the range (min–max) of the runs.",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {doc['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}",
        f"- whole suite: {doc['suite_seconds']:.0f} s",
        *(["- pictures: drawn from the JSON by `bench/plots.py`, beside this file"] if figures else []),
        "",
    ]
    r = {**doc["results"], **derived(doc["results"])}
    for name, render in SECTIONS:
        if name in r and "error" in r[name]:
            lines += [f"## {name}: FAILED", "", f"`{r[name]['error']}`", ""]
        elif name in r:
            rendered = render(r[name])
            if "run" in r[name]:  # merged from a run of its own (``--merge``)
                rendered[1:1] = ["", _separate_run(r[name]["run"])]
            if figures and name in figures:
                rendered += ["", f"![{PICTURES[name][1]}]({figures[name]})"]
            lines += rendered
            lines.append("")
    lines += PROFILES
    return "\n".join(lines)


#: What profiling the hot paths showed while the suite was built, and what changed. These are
#: fixed notes (measured once, with the commands given), not figures of the run above.
PROFILES = [
    "## What the profiles showed, and what changed",
    "",
    "Measured on the machine above while building the suite; each row is the same command before and after.",
    "",
    "| path (command) | the profile showed | change | before → after |",
    "|---|---|---|---|",
    "| fan-out (`make profile PROFILE=generate`, 10,000 fans, in-process) | the worker waited on moto "
    "(65 % busy) for one call at a time: 1,000-row demand pages, 25-item writes, 100-key look-ups in sequence; "
    "boto3's TypeSerializer at 10 % of a chunk | one Query per 5,000-fan chunk (DynamoDB caps a page at 1 MB "
    "anyway), the chunk's look-ups and writes concurrent on a per-process thread pool, the next page read "
    "while the chunk is written, strings and integers serialized directly; a run that follows a clean handover "
    "skips the existence look-up | 467 → 610 notifications/s; moto 65 % → 91 % busy (the emulator now binds) |",
    "| cached `eventDetails` (`make profile PROFILE=api`, 2,000 requests through the ASGI app) | GraphQL "
    "validation of the same query text on every request: 70 % of the CPU | each distinct query text parsed and "
    "validated once (bounded LRU) | 155 → 1,002 requests/s |",
    "| bridge (`make profile PROFILE=bridge`, stream records to tasks, in-process) | 84 % of the bridge's CPU "
    "in publishing Flower's task-sent event: a Redis producer taken and one message published per task | the "
    "events of a publish batch gathered into one message (receivers take a list, as from a worker's buffer) "
    "| 1.6 → 0.7 ms of CPU per record |",
    "| the whole pipeline (py-spy `--gil` on every process during benchmark 7's sale) | no hot spot: botocore's "
    "per-request work (validation, signing, parsing) and JSON dominate, spread over every call | none in code: "
    "the lever is fewer requests per notification (benchmark 7), e.g. checkpoints below | – |",
    "| bridge checkpoints (benchmark 7's request counts) | one PutItem per stream page: 0.5 per notification "
    "in a sale | a shard's checkpoint written at most once a second while busy (at once when idle or stopping) "
    "| 0.51 (a 500-fan sale) → 0.09 (a 1,000-fan sale) PutItem per notification |",
    '| broker (`make bench BENCH_ARGS="--only broker"`) | the worker idle most of the time: kombu\'s SQS '
    "transport waits `polling_interval` (0.3 s) whenever the worker's prefetch is full, so a busy worker "
    "took at most 4 messages per 0.3 s | `DMD_SQS_POLLING_INTERVAL_SECONDS` 0.3 → 0.05 (an empty queue is "
    "long-polled anyway; the pause makes no request) | 13 → 57 no-op tasks/s |",
    "",
]


def _fanout(f: dict[str, Any]) -> list[str]:
    rss = f["worker_rss_mib"]
    return [
        "## 1. Fan-out",
        "",
        f"One sale for N = {f['fans']:,} fans written by the generate worker (`worker-generate`, one process),",
        f"interleaved with a bare boto3 loop writing {f['raw_items_per_run']:,} notification-shaped items per run",
        f"(BatchWriteItem, 25 a call) to the same endpoint, {f.get('raw_runs', f['runs'])} times. A sale of "
        f"{f['fans']:,} takes minutes on the emulator, so the default is",
        "one such run (`--fanout-runs 3` for a median; about 5 minutes more a run).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| notifications written per second | {_m(f['generate_notifications_per_second'])} |",
        f"| the same at N/10 (a smaller table) | {f.get('n_over_10_notifications_per_second', 0):,.0f} |",
        f"| bare BatchWriteItem ceiling (items/s) | {_m(f['raw_batch_write_items_per_second'])} |",
        f"| ratio to the ceiling (of the medians) | {_ratio(f['ratio_to_raw'])} |",
        f"| generate worker peak RSS: idle / at N/10 / at N | {rss['idle']} / {rss['at_n_over_10']} / "
        f"{rss['at_n']} MiB |",
        f"| seeding the demand rows (project's BatchWriteItem path) | {f['seed_rows_per_second']:,} rows/s |",
        "",
        "Writing is not all a sale costs: the generator also reads every demand row (a Query per 5,000)",
        "and looks up every phone number among the opt-outs (BatchGetItem), which the bare loop does not.",
        "moto sorts the whole table on every Query (half of its time during a fan-out, by py-spy), so a sale",
        "is slower the more the table holds: the N/10 sale ran on a table of 1.1 N items, the N sale on 1.2 N",
        "growing to 2.2 N, and every further run adds N. On DynamoDB a Query costs what it returns.",
    ]


def _simulator_priority(nice: int | None) -> str:
    """How the provider's clock was kept from waiting for the workers it measures (or was not)."""
    if nice is None:
        return "The simulator ran at the pipeline's CPU priority."
    if nice < 0:
        return (
            f"The simulator plays a provider on a machine of its own: it ran at a higher CPU priority "
            f"(nice {nice}), so the arrival times it stamps do not wait for the workers being measured."
        )
    return (
        "The simulator ran at the pipeline's CPU priority (raising it was not permitted): the arrival "
        "times it stamps wait for the workers being measured, by tens of milliseconds on a busy machine."
    )


def _send(s: dict[str, Any]) -> list[str]:
    slow = s.get("slow_sale_rate", 4)
    h = s["headroom"]
    return [
        "## 2. Send rate against the provider's cap",
        "",
        f"SMS simulator capped at C = {s['cap_per_second']:g} messages/s (429 + Retry-After above it), "
        f"{s['provider_latency_ms']:g} ms per call;",
        f"{s['send_workers']} send worker processes (the Procfile's `worker-send`, each its own Celery worker); "
        f"a sale of {s['fans_per_run']:,} fans per run",
        "through the whole chain (beat, generator, scheduler, bridge, send), its campaign rate set to C",
        "and the account's cap (`DMD_SMS_ACCOUNT_PARTS_PER_SECOND`) set to C; then, as many runs, two sales at once",
        f"sharing that cap for 2.5 times as long: a slow one (campaign rate {slow:g}/s) and a busy one (campaign",
        "rate C), each run on a fresh emulator (moto's Query walks the whole table: on the table earlier runs",
        "filled, the scheduler's ticks would measure that walk rather than how the cap is shared). A rate",
        "is a sale's steady rate at the provider: its acceptances in the middle three fifths of its span,",
        "over that time (the first tick's ramp-up and the last one's tail left out). Sends are",
        f"spaced `DMD_SMS_ACCOUNT_HEADROOM` wider than 1/C (default {h * 100:g} %: up to {h * 1000:.0f} ms of jitter a "
        "second on the way to the",
        f"provider), so the account's ceiling is C / {1 + h:g} = {s['cap_per_second'] / (1 + h):.2f}/s; as they go, "
        f"no more than C leave in any {1 + h:g} s.",
        "What is left to the busy sale is that ceiling less what the slow sale really took over the same time;",
        "the busy sale's rate is also given against C less the slow sale's rate, which counts the headroom as lost.",
        _simulator_priority(s.get("simulator_nice")),
        "",
        "| figure | value |",
        "|---|---|",
        f"| sustained send rate | {_m(s['sustained_per_second'], ' /s', 1)} |",
        f"| as a fraction of C | {_m(s['fraction_of_cap'], digits=3)} |",
        *_two_sales_rows(s, "two sales: "),
        f"| most requests arriving at the provider in any one-second window, both kinds of run (must be ≤ C) | "
        f"{s.get('max_requests_in_one_second', '–')} |",
        f"| most of them accepted in any one-second window | {s['max_accepted_in_one_second']} |",
        f"| 429s the provider answered | {s['provider_429s']} |",
        f"| the chain's ceiling on this emulator (no cap, same latency) | {s['chain_ceiling_per_second']:.1f} /s |",
        *_compare_headroom(s.get("compare_headroom") or {}, h),
    ]


def _two_sales_rows(s: dict[str, Any], prefix: str = "") -> list[str]:
    return [
        f"| {prefix}the busy sale's rate as a fraction of what is left (the ceiling less the slow sale's rate) | "
        f"{_m(s.get('busy_fraction_of_left'), digits=3)} |",
        f"| {prefix}the busy sale's rate as a fraction of C less the slow sale's rate | "
        f"{_m(s.get('busy_fraction_of_cap_left'), digits=3)} |",
        f"| {prefix}the slow sale's rate over the same time | {_m(s.get('slow_sale_rate_seen'), ' /s', 2)} |",
    ]


def _compare_headroom(w: dict[str, Any], default: float) -> list[str]:
    if not w:
        return []
    return [
        "",
        f"The same two-sales runs with `DMD_SMS_ACCOUNT_HEADROOM={w['headroom']:g}` "
        f"({w['headroom'] * 1000:.0f} ms of jitter allowed a second, against {default * 1000:.0f} ms; "
        "what is left is measured against its own ceiling):",
        "",
        "| figure | value |",
        "|---|---|",
        *_two_sales_rows(w),
        f"| most requests arriving at the provider in any one-second window (must be ≤ C) | "
        f"{w['max_requests_in_one_second']} |",
        f"| 429s the provider answered | {w['provider_429s']} |",
    ]


def _latency(r: dict[str, Any]) -> list[str]:
    a, b, st = r["demand_insert_to_short_url"], r["scheduled_to_sent"], r["settings"]
    return [
        "## 3. Latency through the chain (no backlog)",
        "",
        "One item in flight at a time; the processes run with the local profile's polling settings",
        f"(bridge idle sleep {st['bridge_idle_sleep_seconds']} s, SQS wait {st['sqs_wait_time_seconds']} s, "
        f"polling interval {st['sqs_polling_interval_seconds']} s), which bound these figures.",
        "",
        "| leg | samples | p50 | p95 | max |",
        "|---|---|---|---|---|",
        f"| demand insert → short URL stored | {a['samples']} | {a['p50_ms']:,.0f} ms | {a['p95_ms']:,.0f} ms | "
        f"{a['max_ms']:,.0f} ms |",
        f"| `scheduled` → `sent` | {b['samples']} | {b['p50_ms']:,.0f} ms | {b['p95_ms']:,.0f} ms | "
        f"{b['max_ms']:,.0f} ms |",
    ]


def _bridge(b: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Bridge throughput",
        "",
        "One `bridge-demand` process reading a backlog of DynamoDB stream records and enqueueing their tasks,",
        "against a bare boto3 loop sending as many messages of the same size "
        f"({b['message_bytes']:,} bytes) with SendMessageBatch",
        "to the same queue, both from an empty queue.",
        "",
        "| records | records/run | records/s | tasks/s | bare SendMessageBatch messages/s | ratio (tasks/s to bare) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("demand_inserts", "demand rows, distinct events (1 record → 1 task)"),):
        if name in b:
            f = b[name]
            lines.append(
                f"| {label} | {f['records_per_run']:,} | {_m(f['records_per_second'])} | "
                f"{_m(f['tasks_per_second'])} | {_m(f['bare_messages_per_second'])} | "
                f"{_m(f['ratio_to_bare'], digits=2)} |"
            )
    lines += [
        "",
        "With one task per record the bridge is bound by SQS, and the ratio says how close it comes. With",
        "batched records it sends a twentieth of the messages and is bound by reading the stream (moto's",
        "DynamoDB Streams) instead: a low ratio there means SQS has room to spare.",
    ]
    st = b.get("status_bridges")
    if st:
        one, two = st["records_per_second_1"], st["records_per_second_2"]
        lines += [
            "",
            f"**One or two status bridges.** `bridge-sms-status` on the status stream ({st['shards']} shards),",
            f"{st['events_per_run']:,} delivery statuses per run ({st['tasks_per_run']} tasks), with one process",
            "and with two sharing the shards through leases:",
            "",
            "| processes | records/s | ratio to one |",
            "|---|---|---|",
            f"| 1 | {_m(one)} | 1.00 |",
            f"| 2 | {_m(two)} | {two['median'] / one['median']:.2f} |",
            "",
            "Both processes read through one emulator on the same cores, which bounds them together: a second",
            "process is there for failover (shown by `make chaos`, scenario `bridge-leases`); a",
            "ratio near 1 says the emulator, not the reading, is the limit here.",
        ]
    return lines


def _broker(b: dict[str, Any]) -> list[str]:
    return [
        "## 5. Broker ceiling",
        "",
        f"A no-op task through the project's base task and worker settings (the `query` worker, concurrency "
        f"{b['worker_concurrency']}, prefetch 1, late acks), {b['tasks_per_run']:,} per run published ten a call",
        f"while fewer than {b['queue_depth_kept_under']} wait (the pipeline keeps its queues shallow too).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| no-op tasks per second (publish + consume) | {_m(b['noop_tasks_per_second'])} |",
        f"| publishing: one `apply_async` (SendMessage) each | {_m(b['publish_apply_async_per_second'])} /s |",
        f"| publishing: ten a SendMessageBatch (the bridges' way) | "
        f"{_m(b['publish_send_message_batch_per_second'])} /s |",
        f"| what batching the publish buys | × {b['publish_batching_gain']} |",
    ]


def _broker_use(u: dict[str, Any]) -> list[str]:
    return [
        "**How much of the broker the pipeline uses.** At the chain's ceiling on this emulator "
        f"({u['pipeline_notifications_per_second']:.1f} notifications/s, benchmark 2) and "
        f"{u['tasks_per_notification']} tasks per notification (benchmark 7), the pipeline runs "
        f"{u['pipeline_tasks_per_second']:.1f} tasks/s: {100 * u['share_of_broker_ceiling']:.0f} % of the no-op "
        f"ceiling. That ceiling allows {u['notifications_per_second_the_broker_allows']:,.0f} notifications/s "
        f"with the batches as they are; with one task per notification for sending and one for its status "
        f"({u['tasks_per_notification_unbatched']} tasks per notification), "
        f"{u['notifications_per_second_the_broker_allows_unbatched']:,.0f}."
        + (" (Benchmarks 2, 5 and 7 did not all come from one run here.)" if u.get("from_separate_runs") else ""),
    ]


SECTIONS: list[tuple[str, Any]] = [
    ("fanout", _fanout),
    ("send", _send),
    ("latency", _latency),
    ("bridge", _bridge),
    ("broker", _broker),
    ("broker_use", _broker_use),
    ("query", _query),
    ("cost", _cost),
    ("cost_eum", lambda c: _cost(c, eum=True)),
    ("scale", _scale),
]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report docs/benchmarks.json``: write the Markdown and its pictures again from the JSON."""
    path = Path((argv if argv is not None else sys.argv[1:])[0])
    document = json.loads(path.read_text())
    document["results"].update(derived(document["results"]))
    figures = write_plots(document, path.with_suffix(".md"))
    path.with_suffix(".md").write_text(markdown(document, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
