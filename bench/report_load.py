"""The load and cost sections of ``docs/benchmarks.md``: the query surface under load, requests and
CPU per notification, and a sale at scale."""

from __future__ import annotations

from typing import Any


def _m(figure: dict[str, Any] | None, unit: str = "", digits: int = 0) -> str:
    """``median (min–max, n runs)`` of a summary."""
    if not figure or figure.get("median") is None:
        return "–"
    fmt = f"{{:,.{digits}f}}"
    if figure["runs"] == 1:
        return f"{fmt.format(figure['median'])}{unit}"
    return (
        f"{fmt.format(figure['median'])}{unit} ({fmt.format(figure['min'])}–{fmt.format(figure['max'])}, "
        f"{figure['runs']} runs)"
    )


def _ratio(value: Any) -> str:
    """A ratio: a plain number, or (older runs) a summary of per-run ratios."""
    return _m(value, digits=2) if isinstance(value, dict) else f"{value:.2f}"


def _query(q: dict[str, Any]) -> list[str]:
    generator = q.get("generator", "bench.loadgen")
    by = (
        f"`{generator}` (C, its own process, two threads)"
        if generator.startswith("wrk")
        else "`bench.loadgen` (Python threads, its own process: above ~1,500 requests/s it is the bottleneck)"
    )
    lines = [
        "## 6. Query surface",
        "",
        f"`eventDetails` for one cached event, closed loop, one keep-alive connection per client, from {by}",
        f"on loopback, {q['seconds_per_level']:g} s per level; the API is the Procfile's `api` (one uvicorn process",
        "on uvloop and httptools; cache hits answered on the event loop, `dmd_tasks/api/cached.py`).",
        "The load generator shares the machine's cores with the API.",
        "",
        "| clients | requests/s | p50 | p99 |",
        "|---|---|---|---|",
    ]
    for c, f in q["cached"].items():
        lines.append(f"| {c} | {_m(f['rps'])} | {_m(f['p50_ms'], ' ms', 2)} | {_m(f['p99_ms'], ' ms', 2)} |")
    r = q["redis_get"]
    lines += [
        f"| bare Redis GET, one connection | {_m(r['rps'])} | {_m(r['p50_ms'], ' ms', 3)} | "
        f"{_m(r['p99_ms'], ' ms', 3)} |",
        "",
    ]
    health = q.get("health_under_load")
    if health and health.get("clients"):
        lines.append(
            "`/health` asked every 100 ms while each level ran: "
            + "; ".join(
                f"{c} clients p50 {f['p50_ms']} ms, slowest {f['max_ms']} ms of {f['samples']}"
                for c, f in health["clients"].items()
            )
            + f"; {health['failures']} failed."
        )
    lines.append(
        f"Cold misses (a new event each, Discovery simulator at {q['cold']['discovery_latency_ms']:g} ms, paced "
        f"under the shared Discovery rate limit): p50 {q['cold']['p50_ms']:,.1f} ms, p99 {q['cold']['p99_ms']:,.1f} ms "
        f"over {q['cold']['samples']} requests. Errors under load: {q['errors']}."
    )
    return lines


def _cost(c: dict[str, Any], eum: bool = False) -> list[str]:
    lines = [
        "## 7b. The same through AWS End User Messaging SMS" if eum else "## 7. Requests and CPU per notification",
        "",
        *(
            [
                "The same sale with `DMD_SMS_PROVIDER=eum` (the simulator behind boto3's `pinpoint-sms-voice-v2`",
                "client; its events come back through SNS, the intake queue and `bridge-sqs`). The service cannot",
                "deduplicate a send, so each call is preceded by an intent write (`calling`); the provider's calls",
                "are AWS requests here and counted.",
                "",
            ]
            if eum
            else []
        ),
        f"A demo sale of {c['fans']:,} fans ({c['notifications']:,} notifications: "
        + ", ".join(f"{k} {v}" for k, v in c["status"].items() if v)
        + f") in {c['elapsed_seconds']:.0f} s.",
        "AWS requests counted in the clients of every pipeline process (a botocore `before-sign` hook;",
        "kombu's SQS calls included), from the sale's start to its end: idle polling during the sale",
        "included; the processes' start-up and the idle window measured before the sale are not"
        + (f" ({c['aws_requests_before_sale']:,} requests)." if "aws_requests_before_sale" in c else "."),
        "",
        f"- AWS requests per notification: **{c['aws_requests_per_notification']}** ("
        + ", ".join(f"{s} {v}" for s, v in c["by_service_per_notification"].items())
        + ")",
        f"- DynamoDB units per notification: {c['dynamodb_write_units_per_notification']} write, "
        f"{c['dynamodb_read_units_per_notification']} read (estimated: items written, one read unit per item "
        "read by key and per 4 KB a query returned, plus the index entries the data model writes)",
        "- Celery tasks per notification: " + ", ".join(f"{t} {v}" for t, v in c["tasks_per_notification"].items()),
        f"- CPU of the project's own processes: **{c['cpu_seconds_per_1000_notifications']} s per 1,000 "
        f"notifications** ({c['cpu_seconds_total']} s in all)"
        + (
            f"; the idle pipeline polls for {c['idle_cpu_seconds_per_second']} CPU s a second, and without that "
            f"{c['cpu_seconds_per_1000_notifications_less_idle']} s per 1,000"
            if "idle_cpu_seconds_per_second" in c
            else ""
        ),
        *_cost_breakdowns(c),
    ]
    return lines + _cost_table(c)


def _cost_breakdowns(c: dict[str, Any]) -> list[str]:
    """The idle pipeline's cost and the sale's by operation and by process (runs since they came)."""
    return [
        *(
            [
                f"- The idle pipeline (every process up, nothing to do): {c['idle_aws_requests_per_second']} AWS "
                f"requests and {c['idle_cpu_seconds_per_second']} CPU s a second",
                f"- Stream records the bridges read per notification: {c['stream_records_per_notification']} "
                "(the demand row; notifications live in a table without a stream)",
            ]
            if "idle_aws_requests_per_second" in c
            else []
        ),
        *(
            [
                "- Idle requests a second, by operation: "
                + ", ".join(f"{op} {v}" for op, v in c["idle_aws_requests_per_second_by_operation"].items())
            ]
            if c.get("idle_aws_requests_per_second_by_operation")
            else []
        ),
        *(
            [
                "- CPU seconds of the sale, by process: "
                + ", ".join(f"{p} {v}" for p, v in c["cpu_seconds_by_process"].items())
            ]
            if c.get("cpu_seconds_by_process")
            else []
        ),
    ]


def _cost_table(c: dict[str, Any]) -> list[str]:
    """Requests by operation, and what they cost at list prices."""
    p = c["prices"]
    lines = [
        "",
        "| service operation | requests | per notification |",
        "|---|---|---|",
    ]
    for op, f in c["by_operation"].items():
        lines.append(f"| {op} | {f['requests']:,} | {f['per_notification']} |")
    cost = c["cost_per_million_notifications_usd"]
    lines += [
        "",
        f"Cost per million notifications at AWS list prices ({p['region']}, as of {p['date']}; SMS excluded): "
        f"SQS ${cost['sqs']:,.2f} (${p['sqs_per_million_requests']} per million requests), "
        f"DynamoDB writes ${cost['dynamodb_writes']:,.2f} (${p['dynamodb_per_million_write_units']} per million "
        f"write units, on demand), reads ${cost['dynamodb_reads']:,.2f} (${p['dynamodb_per_million_read_units']} "
        f"per million read units), DynamoDB Streams ${cost['dynamodb_streams']:,.2f} "
        f"(${p['dynamodb_streams_per_million_reads']} per million GetRecords): **${cost['total']:,.2f}**.",
        "Kinesis (the delivery statuses) is billed per shard-hour, not per request, and is not in this figure.",
    ]
    return lines


def _scale(s: dict[str, Any]) -> list[str]:
    rate = s["campaign_rate"]
    lines = [
        "## 8. Sale size: the send rate of a small and a big sale on one stack",
        "",
        f"Two sales one after the other through every pipeline process, both at a campaign rate of C = {rate:g}/s",
        "(the account's cap above it): the big one "
        + (
            "has a third of its fans sharing a number with another (they end `duplicate`: one SMS per phone) and "
            if s.get("big_shares_numbers", True)
            else "has a number per fan and "
        )
        + "runs on the table the small one left. The rate is the",
        "provider's accepted messages per second from the first to the last; N is the phones messaged.",
        "",
        "| sale | fans | N (phones) | send rate | of C | notifyAt → all final | N / C | of N / C |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("small", "big"):
        x = s[name]
        lines.append(
            f"| {name} | {x['fans']:,} | {x['messaged']:,} | {x['send_rate']:.1f}/s "
            f"| {_ratio(x['send_rate_of_campaign_rate'])} | {x['final_after_seconds']:.0f} s "
            f"| {x['n_over_c_seconds']:.0f} s | {x['final_after_of_n_over_c']:.2f} |"
        )
    lines += ["", f"The big sale's rate is **{_ratio(s['rate_ratio_big_to_small'])}** of the small one's."]
    return lines
