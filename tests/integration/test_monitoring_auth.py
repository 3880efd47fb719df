"""Issue 12: the local stack's Prometheus and Alertmanager speak HTTPS only (a certificate from their CA),
refuse a client without credentials (HTTP 401) and answer one with the basic-auth password their start wrote
(owner-only file); Prometheus reaches Alertmanager over verified TLS; the stack's port probe counts their
ports as refused."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import pytest

from neuroflow.devtools.monitoring_servers import (
    MonitoringServer,
    basic_auth_header,
    start_alertmanager,
    start_prometheus,
)
from neuroflow.devtools.port_probe import probe_stack
from tests.servers.prometheus_api import wait_until


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MonitoringServer, MonitoringServer]]:
    root = tmp_path_factory.mktemp("monitoring-auth")
    alertmanager = start_alertmanager(root / "alertmanager")
    try:
        prometheus = start_prometheus(root / "prometheus", targets=[], alertmanager=alertmanager)
        try:
            yield prometheus, alertmanager
        finally:
            prometheus.stop()
    finally:
        alertmanager.stop()


def _status(url: str, headers: Mapping[str, str], context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers)), timeout=5,
                                    context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


PATHS = {"prometheus": ["/-/ready", "/api/v1/query?query=up", "/api/v1/alertmanagers"],
         "alertmanager": ["/-/ready", "/api/v2/status", "/api/v2/alerts"]}


def test_prometheus_and_alertmanager_answer_only_their_user(
    servers: tuple[MonitoringServer, MonitoringServer],
) -> None:
    for server in servers:
        assert server.password_file is not None
        assert server.password_file.stat().st_mode & 0o777 == 0o600
        password = server.password_file.read_text()
        assert password not in (server.root / "web.yml").read_text()  # only its bcrypt hash
        assert password not in (server.root / f"{server.name}.log").read_text()
        context = server.ssl_context()
        assert server.url.startswith("https://") and context is not None
        for path in PATHS[server.name]:
            url = server.url + path
            assert _status(url, {}, context) == 401, url
            assert _status(url, basic_auth_header(server.username, password + "x"), context) == 401, url
            assert _status(url, server.headers, context) == 200, url
            # plain HTTP gets Go's refusal to talk to it, with credentials or without
            assert _status(url.replace("https://", "http://"), server.headers) == 400, url
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _status(server.url + "/-/ready", server.headers, ssl.create_default_context())  # not the system CAs'


def test_prometheus_logs_in_to_alertmanager(servers: tuple[MonitoringServer, MonitoringServer]) -> None:
    prometheus, alertmanager = servers
    config = (prometheus.root / "prometheus.yml").read_text()
    assert f"password_file: {alertmanager.password_file}" in config
    assert alertmanager.password_file is not None and alertmanager.password_file.read_text() not in config
    assert "scheme: https" in config and f"ca_file: {alertmanager.ca_file}" in config
    # Prometheus itself says it reaches Alertmanager at the https URL (its discovered Alertmanagers)
    def active() -> list[str]:
        request = urllib.request.Request(prometheus.url + "/api/v1/alertmanagers", headers=prometheus.headers)
        with urllib.request.urlopen(request, timeout=5, context=prometheus.ssl_context()) as answer:
            return [a["url"] for a in json.load(answer)["data"]["activeAlertmanagers"]]

    wait_until("Prometheus discovered Alertmanager", lambda: bool(active()), 30)
    assert active() == [f"https://127.0.0.1:{alertmanager.port}/api/v2/alerts"]


def test_port_probe_counts_their_ports_as_refused(servers: tuple[MonitoringServer, MonitoringServer]) -> None:
    stack = {"orthanc": {"site": {"ca_file": ""}},
             "processes": [{"name": s.name, "pid": s.pid} for s in servers]}
    verdicts = probe_stack(stack)
    assert {(v.process, v.port) for v in verdicts} == {(s.name, s.port) for s in servers}
    for verdict in verdicts:
        assert verdict.refused and not verdict.pending, str(verdict)
        assert verdict.detail == "HTTP 401", str(verdict)
