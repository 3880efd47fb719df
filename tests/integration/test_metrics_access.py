"""A service's metrics port secured as the stack and the chart secure it (core/status_server): TLS only,
/metrics for the scraper's login alone, /healthz and /readyz telling a stranger their status and nothing
more; and a real Prometheus scraping it over https with that login (what `neuroflow stack up` configures)."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from neuroflow.core.config import MetricsAccessSettings
from neuroflow.core.health import Health
from neuroflow.core.status_server import MetricsAccess, start_status_server
from neuroflow.devtools.certificates import make_authority, write_private
from neuroflow.devtools.monitoring_servers import (
    SCRAPE_USER,
    MetricsAccessFiles,
    basic_auth_header,
    start_alertmanager,
    start_prometheus,
)
from tests.servers.prometheus_api import query, wait_until


@dataclass(frozen=True)
class SecuredPort:
    url: str
    files: MetricsAccessFiles
    server: ThreadingHTTPServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredPort]:
    root = tmp_path_factory.mktemp("metrics-access")
    authority = make_authority(root / "tls")
    issued = authority.issue("metrics", root / "metrics")
    password_file = root / "metrics" / "password"
    write_private(password_file, b"s3cret-scrape-password\n")  # a mounted Secret ends with a newline
    files = MetricsAccessFiles(SCRAPE_USER, password_file, authority.certificate, issued.certificate,
                               issued.private_key)
    settings = MetricsAccessSettings(password_file=password_file, cert_file=issued.certificate,
                                     key_file=issued.private_key)
    health = Health()
    health.beat("ingest")
    health.add_check("state_db", lambda: None)
    server = start_status_server(0, "127.0.0.1", stall_s=60.0, check_timeout_s=2.0, health=health,
                                 access=MetricsAccess.from_settings(settings))
    try:
        yield SecuredPort(f"https://127.0.0.1:{server.server_address[1]}", files, server)
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, context: ssl.SSLContext, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=10,
                                    context=context) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_need_the_scrapers_login(secured: SecuredPort) -> None:
    context = secured.files.ssl_context()
    status, _ = _get(f"{secured.url}/metrics", context)
    assert status == 401
    wrong = basic_auth_header(SCRAPE_USER, "s3cret-scrape-password\n")  # the file's newline is not the password
    assert _get(f"{secured.url}/metrics", context, wrong)[0] == 401
    status, body = _get(f"{secured.url}/metrics", context, secured.files.headers)
    assert status == 200 and b"python_info" in body


def test_health_tells_a_stranger_its_status_alone(secured: SecuredPort) -> None:
    context = secured.files.ssl_context()
    for path in ("/healthz", "/readyz"):
        status, body = _get(f"{secured.url}{path}", context)
        assert (status, json.loads(body)) == (200, {"status": "ok"}), path
        status, body = _get(f"{secured.url}{path}", context, secured.files.headers)
        assert status == 200 and "checks" in json.loads(body), path
    assert json.loads(_get(f"{secured.url}/readyz", context, secured.files.headers)[1])["checks"] == {"state_db": "ok"}


def test_the_port_speaks_tls_only_and_a_silent_client_blocks_no_one(secured: SecuredPort) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{secured.port}/metrics", timeout=5)
    # A client that connects and never starts its handshake must not hold up the next one: the handshake
    # runs in the request's thread.
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5):
        status, _ = _get(f"{secured.url}/healthz", secured.files.ssl_context())
        assert status == 200
    # A client that does not trust the site's CA gets no answer.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{secured.url}/healthz", timeout=5, context=ssl.create_default_context())


def test_prometheus_scrapes_it_over_tls_with_the_login(secured: SecuredPort, tmp_path: Path) -> None:
    alertmanager = start_alertmanager(tmp_path / "alertmanager", fast=True)
    try:
        prometheus = start_prometheus(tmp_path / "prometheus", targets=[("ingest", f"127.0.0.1:{secured.port}")],
                                      alertmanager=alertmanager, fast=True, scrape_access=secured.files)
        try:
            config = (prometheus.root / "prometheus.yml").read_text()
            assert "s3cret-scrape-password" not in config  # the password file is named, not copied
            wait_until("Prometheus scraped the secured port", lambda: [
                r["value"][1] for r in query(prometheus.url, 'up{job="neuroflow"}', prometheus.headers,
                                             prometheus.ssl_context())] == ["1"],
                wait_s=60)
            assert query(prometheus.url, 'python_info{job="neuroflow",service="ingest"}', prometheus.headers,
                         prometheus.ssl_context())
        finally:
            prometheus.stop()
    finally:
        alertmanager.stop()


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="key_file go together"):
        MetricsAccessSettings(cert_file=Path("/tmp/metrics.crt"))
