"""The Grafana dashboards in deploy/grafana load, every panel has a query, every query is valid PromQL
(promtool parses it as a recording rule) and uses only metrics neuroflow defines (neuroflow.core.metrics)
or the standard Prometheus and Triton ones listed here. The alert rules are held to the same names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuroflow.core import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
EXPECTED_DASHBOARDS = {"fleet-overview.json", "site.json", "pipeline.json", "inference.json"}

# Series Prometheus makes itself, and Triton's metrics (https://github.com/triton-inference-server/server/
# blob/main/docs/user_guide/metrics.md): the only names a query may use besides neuroflow's own.
PROMETHEUS_METRICS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})
TRITON_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_gpu_utilization", "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes", "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
})
KNOWN = metrics.exposed_names() | PROMETHEUS_METRICS | TRITON_METRICS

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "offset", "bool", "inf", "nan"})
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names in matchers or grouping clauses, durations, numbers or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = _CLAUSE.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    return {name for name in _IDENTIFIER.findall(text)
            if name.lower() not in _KEYWORDS and not re.fullmatch(r"\d[\w.]*", name)}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the board: its panels' targets and its query variables'."""
    found = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and isinstance(query, dict):
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query["query"])
            assert inner, f"variable {variable['name']}: unexpected query {query['query']!r}"
            found.append(inner.group(1))
    return found


def grafana_to_promql(expr: str) -> str:
    """The expression as Prometheus would receive it (Grafana fills in its variables)."""
    return re.sub(r"\$\{?\w+\}?", "x", expr.replace("$__rate_interval", "5m"))


def test_the_four_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == EXPECTED_DASHBOARDS


def test_metric_name_extraction_sees_metrics_and_ignores_labels_functions_and_variables() -> None:
    expr = ('histogram_quantile(0.9, sum by (site, le) (rate(neuroflow_end_to_end_seconds_bucket'
            '{site="$site", pipeline=~"a|b"}[$__rate_interval]))) > on (site) group_left () '
            'max by (site) (neuroflow_end_to_end_target_seconds) and on () hour() >= 8')
    assert metric_names(expr) == {"neuroflow_end_to_end_seconds_bucket", "neuroflow_end_to_end_target_seconds"}
    assert metric_names("sum(rate(made_up_metric_total[5m])) / up") == {"made_up_metric_total", "up"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_query_uses_only_defined_metrics(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] and board["title"]
    graphs = [p for p in panels(board) if p["type"] != "row"]
    assert graphs, f"{path.name} has no panels"
    for panel in graphs:
        assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
    used: set[str] = set()
    for expr in queries(board):
        names = metric_names(expr)
        assert names, f"{path.name}: no metric in {expr!r}"
        unknown = names - KNOWN
        assert not unknown, f"{path.name}: {expr!r} uses undefined metric(s) {sorted(unknown)}"
        used |= names
    assert any(name.startswith("neuroflow_") for name in used)


def test_every_alert_rule_uses_only_defined_metrics() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        unknown = metric_names(rule["expr"]) - KNOWN
        assert not unknown, f"{rule['alert']} uses undefined metric(s) {sorted(unknown)}"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh")
    rules = [{"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": grafana_to_promql(expr)}
             for path in DASHBOARDS for i, expr in enumerate(queries(json.loads(path.read_text())))]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
