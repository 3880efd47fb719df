"""Prometheus and Alertmanager (Debian packages) on loopback for the local stack and the monitoring tests,
configured from ``deploy/prometheus``: the scrape configuration rendered from ``prometheus.yml.template``,
the alert rules of ``alerts.yml`` and the severity routing of ``alertmanager.yml``.

Each server runs in its own session (it outlives the command that started it, as the stack needs) and is
stopped by PID. ``fast=True`` shortens the intervals (scrape and evaluation every second, Alertmanager
grouping of a second) so a test sees an alert within seconds.

Neither answers a client without credentials (issue 12), nor speaks anything but TLS: each gets a web
configuration file (``--web.config.file``, the exporter toolkit's format) with one basic-auth user, ``admin``,
whose password is generated per server and kept in ``web-password`` beside it (owner only; the file holds only
its bcrypt hash), and a certificate for 127.0.0.1 from a CA (the stack's, or one made beside the server).
Prometheus logs in to Alertmanager with that server's password file and verifies its certificate."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import ssl
import string
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from neuroflow.core.config import REPOSITORY_ROOT
from neuroflow.devtools.certificates import CertificateAuthority, make_authority, write_private
from neuroflow.devtools.ports import free_loopback_port, http_ok, wait_until_ports_free, wait_until_ready

DEPLOY = REPOSITORY_ROOT / "deploy" / "prometheus"
PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
ALERTMANAGER_BINARY = Path("/usr/bin/prometheus-alertmanager")
_INSTALL_HINT = "install it with scripts/install-system-deps.sh (Debian prometheus, prometheus-alertmanager)"
WEB_USER = "admin"  # the one user of each server's web configuration


SCRAPE_USER = "prometheus"  # the login Prometheus scrapes the services' metrics ports with


@dataclass(frozen=True)
class MetricsAccessFiles:
    """The services' metrics ports as secured on a stack (core/status_server): the basic-auth login, the CA
    their certificate chains to, and that certificate and key (the services' side)."""

    username: str
    password_file: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    def ssl_context(self) -> ssl.SSLContext:
        """How a client verifies the ports' certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header the ports ask for (a mounted Secret's trailing newline is not part of
        the password: the services and Prometheus drop it too)."""
        return basic_auth_header(self.username, self.password_file.read_text().removesuffix("\n"))


class MonitoringServerError(RuntimeError):
    """Prometheus or Alertmanager could not be started; the message says why and where its log is."""


@dataclass(frozen=True)
class MonitoringServer:
    name: str  # "prometheus" or "alertmanager"
    pid: int
    port: int
    root: Path  # configuration, data and log
    username: str = WEB_USER
    password_file: Path | None = None  # owner only; None: a server answering anyone
    ca_file: Path | None = None  # the CA its HTTPS certificate chains to; None: plain HTTP

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file is not None else 'http'}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """How a client verifies its certificate (None: plain HTTP)."""
        return None if self.ca_file is None else ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header its HTTP API asks for."""
        if self.password_file is None:
            return {}
        return basic_auth_header(self.username, self.password_file.read_text())

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns once its port is free."""
        stop_pid(self.pid, timeout_s)
        wait_until_ports_free([self.port], timeout_s, self.name)


def basic_auth_header(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_web_config(root: Path, authority: CertificateAuthority, name: str,
                     username: str = WEB_USER) -> tuple[Path, Path]:
    """A new password for ``username`` (in ``root/web-password``, 0600) and the web configuration that
    admits only that user (``root/web.yml``: its bcrypt hash) over TLS only, with a certificate for
    127.0.0.1 that ``authority`` issues to ``name`` (in ``root/tls``). Returns (web config, password file)."""
    import bcrypt  # a development dependency: only the local stack and the tests start these servers

    password = secrets.token_urlsafe(24)
    password_file = root / "web-password"
    write_private(password_file, password.encode())
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    issued = authority.issue(name, root / "tls")
    web = {"basic_auth_users": {username: hashed},
           "tls_server_config": {"cert_file": str(issued.certificate), "key_file": str(issued.private_key),
                                 "min_version": "TLS12"}}
    web_config = root / "web.yml"
    write_private(web_config, yaml.safe_dump(web).encode())
    return web_config, password_file


def write_targets(path: Path, targets: Iterable[tuple[str, str]]) -> None:
    """The file_sd file Prometheus reads the service processes from: (service, "host:port") pairs. Written
    whole and renamed into place: Prometheus watches the file and must never read half of it."""
    groups = [{"targets": [address], "labels": {"service": service}} for service, address in targets]
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(partial, path)


def render_prometheus_config(*, rules_file: Path, alertmanager: str, targets_file: Path,
                             triton_targets_file: Path, alertmanager_username: str,
                             alertmanager_password_file: Path, alertmanager_ca_file: Path | None = None,
                             fast: bool = False, scrape_access: MetricsAccessFiles | None = None) -> str:
    """``prometheus.yml.template`` filled in; every placeholder must be given (KeyError otherwise).
    ``alertmanager_ca_file``: Alertmanager speaks HTTPS, its certificate verified against this CA.
    ``scrape_access``: the services' metrics ports ask for a login over TLS (the neuroflow job scrapes
    them over https, verifying their certificate against the CA, with basic auth)."""
    interval = "1s" if fast else "15s"
    template = string.Template((DEPLOY / "prometheus.yml.template").read_text())
    rendered = template.substitute(scrape_interval=interval, evaluation_interval=interval, rules_file=rules_file,
                                   alertmanager=alertmanager, alertmanager_username=alertmanager_username,
                                   alertmanager_password_file=alertmanager_password_file,
                                   neuroflow_targets_file=targets_file,
                                   triton_targets_file=triton_targets_file)
    if scrape_access is None and alertmanager_ca_file is None:
        return rendered
    config: dict[str, Any] = yaml.safe_load(rendered)
    if alertmanager_ca_file is not None:
        for target in config["alerting"]["alertmanagers"]:
            target |= {"scheme": "https", "tls_config": {"ca_file": str(alertmanager_ca_file)}}
    if scrape_access is not None:
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "neuroflow")
        job |= {"scheme": "https", "tls_config": {"ca_file": str(scrape_access.ca_file)},
                "basic_auth": {"username": scrape_access.username,
                               "password_file": str(scrape_access.password_file)}}
    return yaml.safe_dump(config, sort_keys=False)


def immediate_rules(rules_file: Path = DEPLOY / "alerts.yml") -> dict[str, Any]:
    """The alert rules with every ``for`` set to 0s: for tests that must see an alert fire at once."""
    rules: dict[str, Any] = yaml.safe_load(rules_file.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    return rules


def render_alertmanager_config(*, pager_url: str | None = None, ticket_url: str | None = None,
                               fast: bool = False) -> str:
    """``alertmanager.yml`` with its pager and ticket webhook URLs replaced when given."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    urls = {"pager": pager_url, "ticket": ticket_url}
    for receiver in config["receivers"]:
        url = urls.get(receiver["name"])
        if url:
            for hook in receiver["webhook_configs"]:
                hook["url"] = url
    if fast:
        config["route"] |= {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"}
    return yaml.safe_dump(config, sort_keys=False)


def start_prometheus(root: Path, *, targets: Iterable[tuple[str, str]], alertmanager: MonitoringServer,
                     rules: Mapping[str, Any] | None = None, fast: bool = False,
                     scrape_access: MetricsAccessFiles | None = None, authority: CertificateAuthority | None = None,
                     timeout_s: float = 60.0) -> MonitoringServer:
    """Prometheus on a free loopback port, scraping ``targets`` (see :func:`write_targets`), evaluating
    ``rules`` (default: deploy/prometheus/alerts.yml) and sending alerts to ``alertmanager`` with its
    credentials, over HTTPS. Its own HTTPS certificate comes from ``authority`` (default: a CA made in
    ``root/ca``). Returns once it answers /-/ready."""
    if alertmanager.password_file is None:
        raise MonitoringServerError("Alertmanager has no password file: start it with start_alertmanager")
    _require(PROMETHEUS_BINARY)
    root.mkdir(parents=True, exist_ok=True)
    rules_file = root / "alerts.yml"
    rules_file.write_text(yaml.safe_dump(dict(rules)) if rules is not None else (DEPLOY / "alerts.yml").read_text())
    write_targets(root / "targets.json", targets)
    write_targets(root / "triton-targets.json", [])
    (root / "prometheus.yml").write_text(render_prometheus_config(
        rules_file=rules_file, alertmanager=f"127.0.0.1:{alertmanager.port}", targets_file=root / "targets.json",
        alertmanager_username=alertmanager.username, alertmanager_password_file=alertmanager.password_file,
        alertmanager_ca_file=alertmanager.ca_file, triton_targets_file=root / "triton-targets.json", fast=fast,
        scrape_access=scrape_access))
    authority = authority or make_authority(root / "ca")
    web_config, password_file = write_web_config(root, authority, "prometheus")
    port = free_loopback_port()
    command = [str(PROMETHEUS_BINARY), f"--config.file={root / 'prometheus.yml'}",
               f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
               f"--web.config.file={web_config}"]
    return _launch("prometheus", command, root, port, password_file, authority.certificate, timeout_s)


def start_alertmanager(root: Path, *, pager_url: str | None = None, ticket_url: str | None = None,
                       fast: bool = False, authority: CertificateAuthority | None = None,
                       timeout_s: float = 60.0) -> MonitoringServer:
    """Alertmanager on a free loopback port with the routing of deploy/prometheus/alertmanager.yml (its
    webhooks replaced when given); clustering off; HTTPS with a certificate from ``authority`` (default: a
    CA made in ``root/ca``). Returns once it answers /-/ready."""
    _require(ALERTMANAGER_BINARY)
    root.mkdir(parents=True, exist_ok=True)
    (root / "alertmanager.yml").write_text(
        render_alertmanager_config(pager_url=pager_url, ticket_url=ticket_url, fast=fast))
    authority = authority or make_authority(root / "ca")
    web_config, password_file = write_web_config(root, authority, "alertmanager")
    port = free_loopback_port()
    command = [str(ALERTMANAGER_BINARY), f"--config.file={root / 'alertmanager.yml'}",
               f"--storage.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
               f"--web.config.file={web_config}",
               "--cluster.listen-address="]  # empty: no gossip port (one Alertmanager per site here)
    return _launch("alertmanager", command, root, port, password_file, authority.certificate, timeout_s)


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM ``pid`` and wait for it to end; SIGKILL after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
            if done:
                return
        except ChildProcessError:  # not our child: poll for its end
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _launch(name: str, command: list[str], root: Path, port: int, password_file: Path, ca_file: Path,
            timeout_s: float) -> MonitoringServer:
    with (root / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=root)
    server = MonitoringServer(name, process.pid, port, root, WEB_USER, password_file, ca_file)
    context = server.ssl_context()
    try:
        wait_until_ready(process, lambda: http_ok(f"{server.url}/-/ready", server.headers, context=context),
                         timeout_s,
                         what=f"{name} (log {root / name}.log)", log_tail=lambda: _tail(root / f"{name}.log"),
                         error=MonitoringServerError, interval_s=0.2)
    except MonitoringServerError:
        server.stop()
        raise
    return server


def _require(binary: Path) -> None:
    if not binary.exists():
        raise MonitoringServerError(f"{binary} is missing: {_INSTALL_HINT}")


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class WebhookReceiver:
    """An HTTP server on a free loopback port that records every Alertmanager webhook notification by path
    (``/pager``, ``/ticket``), standing in for the pager and ticket systems in tests and demos."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: dict[str, list[dict[str, Any]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with receiver._lock:
                    receiver._received.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:  # quiet: the test reads what was received
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def notified(self, path: str, alertname: str, status: str, **labels: str) -> bool:
        """Whether a notification to ``path`` carried alert ``alertname`` in ``status`` ("firing" or
        "resolved") with ``labels``."""
        with self._lock:
            notes = list(self._received.get(path, []))
        return any(alert["labels"].get("alertname") == alertname and alert["status"] == status
                   and all(alert["labels"].get(k) == v for k, v in labels.items())
                   for note in notes for alert in note.get("alerts", []))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
