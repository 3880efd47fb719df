"""The alert rules in deploy/prometheus are valid, each alert fires in the case it is for and stays quiet
otherwise (promtool test rules on alerts.test.yml), the test file is current with its source, and the
Alertmanager configuration routes critical alerts to the pager and warnings to the ticket queue."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-system-deps.sh (Debian prometheus, "
                    "prometheus-alertmanager)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False)


def test_alert_rules_pass_promtool_check() -> None:
    result = _run(_tool("promtool"), "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_its_case_and_not_otherwise_under_promtool_test() -> None:
    result = _run(_tool("promtool"), "test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_tests_are_rendered_from_their_current_source() -> None:
    result = _run(sys.executable, "render_alert_tests.py", "--check")
    assert result.returncode == 0, result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_severity_and_a_for() -> None:
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    spec = yaml.safe_load((DEPLOY / "alerts.test.in.yml").read_text())
    cases = [case for test in spec["tests"] for case in test["alert_rule_test"]]
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert "for" in rule, name
        assert rule["annotations"]["description"].strip(), name
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} has no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name} has no case where it stays quiet"


def test_alertmanager_routes_critical_to_pager_and_warning_to_ticket() -> None:
    result = _run(_tool("amtool"), "check-config", "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in (("severity=critical", "pager"), ("severity=warning", "ticket")):
        routed = _run(_tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml",
                      "alertname=NeuroflowStorageDown", labels)
        assert routed.returncode == 0, routed.stdout + routed.stderr
        assert routed.stdout.strip() == receiver, routed.stdout


def test_rendered_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    from neuroflow.devtools.monitoring_servers import render_prometheus_config, write_targets

    write_targets(tmp_path / "targets.json", [("monitor", "127.0.0.1:9100")])
    write_targets(tmp_path / "triton.json", [])
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(
        rules_file=DEPLOY / "alerts.yml", alertmanager="127.0.0.1:9093", targets_file=tmp_path / "targets.json",
        triton_targets_file=tmp_path / "triton.json", alertmanager_username="admin",
        alertmanager_password_file=tmp_path / "alertmanager-password"))
    result = _run(_tool("promtool"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"])
    assert f"{rules} rules found" in result.stdout + result.stderr
