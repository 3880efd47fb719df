"""Monitoring of the local stack: `neuroflow stack up` also starts Prometheus (scraping every service
process, the monitor included, with the alert rules loaded) and Alertmanager, and writes their URLs to
stack.json. On the running stack: stopping the site Orthanc makes NeuroflowOrthancDown reach the pager
webhook through Alertmanager and resolve when Orthanc is back; stopping a worker makes NeuroflowServiceDown
reach the pager and resolve once a replacement runs. The stack runs with its fast monitoring option
(1 s intervals, alerts without their `for`)."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from neuroflow.devtools import stack
from neuroflow.devtools.monitoring_servers import WebhookReceiver
from neuroflow.devtools.ports import port_is_listening
from tests.servers import prometheus_api
from tests.servers.prometheus_api import query, stack_headers, stack_tls

WAIT_S = 90.0


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def monitored_stack(webhook: WebhookReceiver) -> Iterator[dict[str, Any]]:
    options = stack.StackOptions(wait_window_s=3.0, monitoring_fast=True, pager_url=webhook.url("/pager"),
                                 ticket_url=webhook.url("/ticket"))
    with stack.temporary(options, prefix="neuroflow-stack-monitoring-") as started:
        yield started
    ports = [p for proc in started["processes"] for p in proc["ports"]]
    assert not [p for p in ports if port_is_listening(p)], "stack down left ports open"


def wait_until(what: str, check: Callable[[], bool]) -> None:
    prometheus_api.wait_until(what, check, WAIT_S, interval_s=0.5)


Ask = Callable[[str], list[dict[str, Any]]]  # a PromQL query to the stack's Prometheus, logged in


def value_is(prometheus: Ask, expr: str, expected: str) -> bool:
    result = prometheus(expr)
    return bool(result) and all(r["value"][1] == expected for r in result)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _is_one(prometheus: Ask, expr: str) -> Callable[[], bool]:
    return lambda: value_is(prometheus, expr, "1")


def test_stack_scrapes_every_service_and_the_probes_see_every_backend_up(monitored_stack: dict[str, Any]) -> None:
    written = json.loads((Path(monitored_stack["root"]) / "stack.json").read_text())
    prometheus_url, alertmanager = written["prometheus"], written["alertmanager"]
    assert prometheus_url.startswith("https://127.0.0.1:") and alertmanager.startswith("https://127.0.0.1:")
    headers, tls = stack_headers(written, "prometheus"), stack_tls(written, "prometheus")

    def prometheus(expr: str) -> list[dict[str, Any]]:
        return query(prometheus_url, expr, headers, tls)

    ready = urllib.request.Request(f"{alertmanager}/-/ready", headers=stack_headers(written, "alertmanager"))
    with urllib.request.urlopen(ready, timeout=5, context=stack_tls(written, "alertmanager")) as answer:
        assert answer.status == 200
    wait_until("every service process is scraped", lambda: {
        r["metric"]["service"] for r in prometheus('up{job="neuroflow"} == 1')} == {*stack.SERVICES, "console"})
    for expr in ('neuroflow_orthanc_up', 'neuroflow_kafka_up', 'neuroflow_state_store_up',
                 'neuroflow_storage_up{path_role="volumes"}', 'neuroflow_storage_up{path_role="orthanc"}'):
        wait_until(f"{expr} is 1", _is_one(prometheus, expr))
    wait_until("consumer lag is measured", lambda: bool(prometheus(
        'neuroflow_kafka_consumer_lag{group="neuroflow.orchestrator"}')))

    # The monitor process's whole CPU (probe loop, librdkafka's threads, the metrics server) over 10 s of
    # one-second rounds; at the default 15 s period a round costs the same, so the share is 15 times less.
    monitor = next(p for p in written["processes"] if p["name"] == "monitor-1")
    ticks = os.sysconf("SC_CLK_TCK")
    first, started = _cpu_ticks(monitor["pid"]), time.monotonic()
    time.sleep(10.0)
    share = (_cpu_ticks(monitor["pid"]) - first) / ticks / (time.monotonic() - started)
    print(f"\nmonitor process: {share:.2%} of one core at 1 s rounds, about {share / 15:.3%} at the default 15 s")


def test_orthanc_down_reaches_the_pager_and_resolves_when_it_is_back(
    monitored_stack: dict[str, Any], webhook: WebhookReceiver,
) -> None:
    site = next(p for p in monitored_stack["processes"] if p["name"] == "orthanc-site")
    stack.stop_process(site)
    try:
        wait_until("NeuroflowOrthancDown reaches the pager", lambda: webhook.notified(
            "/pager", "NeuroflowOrthancDown", "firing", severity="critical"))
    finally:
        stack.restart_orthanc(monitored_stack, "orthanc-site")
    wait_until("NeuroflowOrthancDown resolves", lambda: webhook.notified(
        "/pager", "NeuroflowOrthancDown", "resolved"))


def test_stopped_worker_reaches_the_pager_and_resolves_once_replaced(
    monitored_stack: dict[str, Any], webhook: WebhookReceiver,
) -> None:
    worker = next(p for p in monitored_stack["processes"] if p["name"] == "preprocess-1")
    stack.stop_process(worker)
    wait_until("NeuroflowServiceDown reaches the pager", lambda: webhook.notified(
        "/pager", "NeuroflowServiceDown", "firing", service="preprocess"))
    stack.start_service(monitored_stack, "preprocess", "preprocess-2")
    wait_until("NeuroflowServiceDown resolves", lambda: webhook.notified(
        "/pager", "NeuroflowServiceDown", "resolved", service="preprocess"))
