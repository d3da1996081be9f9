"""The Grafana dashboard and the Prometheus alert rules in deploy/: files Grafana and Prometheus load,
every query in Prometheus' grammar (promql_parser), naming only metrics and labels the processes
export, read from the exporters themselves (``tests/exported.py``); docs/operations.md describes
every alert the rule file has, and no other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from dmd_tasks.domain.entities import NotificationStatus
from dmd_tasks.infra import topology
from tests.exported import Exported, exported

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "deploy" / "prometheus" / "dmd-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dmd-pipeline.json"
OPERATIONS = REPO / "docs" / "operations.md"

#: Grafana's variables as a query sees them: the built-in intervals, and the queue picker (a regex)
GRAFANA_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "queue": ".*"}
#: Labels Prometheus gives every series it scrapes
TARGET_LABELS = frozenset({"job", "instance"})
#: Label values the code names in one place: a query matching another value would find nothing
KNOWN_VALUES: dict[str, frozenset[str]] = {
    "to_status": frozenset(s.value for s in NotificationStatus),
    "from_status": frozenset({"none"} | {s.value for s in NotificationStatus}),
    "queue": frozenset(topology.QUEUE_NAMES + topology.BRIDGE_NAMES + topology.INTAKE_QUEUES),
}
RULE_KEYS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@pytest.fixture(scope="module")
def served(settings, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return exported(settings, tmp_path_factory.mktemp("metrics"))


def rule_file() -> dict[str, Any]:
    loaded = yaml.safe_load(RULES.read_text())
    assert isinstance(loaded, dict)
    return loaded


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_file()["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def substituted(query: str) -> str:
    """``query`` with Grafana's variables (``$name``, ``${name}``) replaced by values Prometheus parses."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VALUES, f"unknown dashboard variable ${name} in {query}"
        return GRAFANA_VALUES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, query)


def selectors(expr: promql_parser.Expr) -> list[tuple[str | None, list[promql_parser.Matcher]]]:
    """The metric name and label matchers of every series selector in ``expr``."""
    found: list[tuple[str | None, list[promql_parser.Matcher]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = list(node.matchers.matchers) + [m for group in node.matchers.or_matchers for m in group]
            named = [m.value for m in matchers if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal]
            found.append((node.name or (named[0] if named else None), [m for m in matchers if m.name != "__name__"]))

    promql_parser.walk(expr, visit)
    return found


def problems(query: str, served: Exported) -> list[str]:
    """What is wrong with ``query``: a syntax error, a metric nobody exports, a label its metric does
    not have, a label value the code never writes. Empty when nothing is."""
    try:
        expr = promql_parser.parse(query)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    found = []
    for name, matchers in selectors(expr):
        if name is None or name not in served.samples:
            found.append(f"{name}: no process exports it")
            continue
        for matcher in matchers:
            if matcher.name not in served.samples[name] | TARGET_LABELS:
                found.append(f"{name} has no label {matcher.name}")
            known = KNOWN_VALUES.get(matcher.name)
            if known and matcher.op == promql_parser.MatchOp.Equal and matcher.value not in known:
                found.append(f'{name}{{{matcher.name}="{matcher.value}"}}: the code writes no such value')
    return found


# --- the rule file ------------------------------------------------------------------------------


def test_the_rule_file_has_the_shape_prometheus_loads() -> None:
    loaded = rule_file()
    assert set(loaded) == {"groups"} and loaded["groups"]
    group_names = [group["name"] for group in loaded["groups"]]
    assert len(group_names) == len(set(group_names))
    for group in loaded["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["rules"], group["name"]
    alerts = [rule["alert"] for rule in rules()]
    assert len(alerts) == len(set(alerts)), "alert names repeat"
    for rule in rules():
        assert set(rule) <= RULE_KEYS, rule["alert"]
        assert NAME.match(rule["alert"]) and isinstance(rule["expr"], str), rule
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert all(NAME.match(label) and isinstance(v, str) for label, v in rule["labels"].items()), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def test_every_rule_expression_parses_and_names_only_what_the_processes_export(served: Exported) -> None:
    found = {rule["alert"]: problems(rule["expr"], served) for rule in rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def slugs(markdown: str) -> set[str]:
    """The anchors of the headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_runbook_points_at_a_section_of_the_operations_guide() -> None:
    anchors = slugs(OPERATIONS.read_text())
    for rule in rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/operations.md" and anchor in anchors, rule["alert"]


def test_the_operations_guide_describes_every_alert_and_no_other() -> None:
    guide = OPERATIONS.read_text()
    section = guide.split("\n### Alerts\n", 1)[1].split("\n#", 1)[0]
    described = set(re.findall(r"^\| `(Dmd\w+)` \|", section, flags=re.MULTILINE))
    assert described == {rule["alert"] for rule in rules()}
    assert "deploy/prometheus/dmd-alerts.yml" in guide and "deploy/grafana/dmd-pipeline.json" in guide


# --- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_imports_anywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 39 and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        # every query goes to the Prometheus picked on import, never to a data source of one Grafana
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_panel_query_parses_and_names_only_what_the_processes_export(served: Exported) -> None:
    found = {f"{title}: {query}": problems(substituted(query), served) for title, query in panel_queries()}
    assert {query: p for query, p in found.items() if p} == {}


# --- the checks themselves ----------------------------------------------------------------------


def test_the_checks_find_a_metric_nobody_exports_a_wrong_label_and_a_syntax_error(served: Exported) -> None:
    assert problems('sum by (to_status) (rate(dmd_notification_transitions_total{to_status="sent"}[5m]))', served) == []
    assert problems("rate(dmd_notifications_sent_total[5m])", served) == [
        "dmd_notifications_sent_total: no process exports it"
    ]
    assert problems("dmd_notification_transitions[5m]", served) != []  # the family without its _total
    assert problems('rate(dmd_tasks_total{stage="send"}[5m])', served) == ["dmd_tasks_total has no label stage"]
    assert problems('dmd_notification_transitions_total{to_status="delivred"}', served) != []
    assert problems("sum(rate(dmd_tasks_total[5m])", served)[0].startswith("does not parse")
    assert problems("histogram_quantile(0.9, rate(flower_task_runtime_seconds_bucket[5m]))", served) == []
    with pytest.raises(AssertionError, match="unknown dashboard variable"):
        substituted("rate(dmd_tasks_total[$__rate_interval]) * $scale")
